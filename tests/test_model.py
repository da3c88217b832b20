import keras
import numpy as np
import pytest

from pneumocnn.core.config import Config
from pneumocnn.network.model import LAST_CONV_LAYER, OUTPUT_LAYER, build_model
from pneumocnn.training.compile import Specificity, compile_model


def test_model_maps_a_batch_of_grayscale_images_to_one_probability_each():
    model = build_model(Config(image_size=48))
    assert model.input_shape == (None, 48, 48, 1)
    outputs = model.predict(np.zeros((3, 48, 48, 1), np.float32), verbose=0)
    assert outputs.shape == (3, 1)


def test_model_accepts_raw_0_255_pixels_and_rescales_inside():
    keras.utils.set_random_seed(0)
    model = build_model(Config(image_size=48))
    rescaling = model.get_layer("rescaling")
    assert (rescaling.scale, rescaling.offset) == (1.0 / 127.5, -1.0)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1)).astype(np.float32)
    # The layer reads the raw pixels straight from the input (a sigmoid's output lying in [0, 1]
    # would hold whatever the preprocessing did).
    rescaled = keras.Model(model.inputs, rescaling.output).predict(pixels, verbose=0)
    np.testing.assert_allclose(rescaled, pixels / 127.5 - 1.0, atol=1e-6)


def test_width_and_depth_come_from_the_config():
    small = build_model(Config(image_size=64, base_filters=8, num_blocks=2))
    large = build_model(Config(image_size=64, base_filters=16, num_blocks=4))
    assert small.count_params() < large.count_params()
    assert large.get_layer(LAST_CONV_LAYER).filters == 16 * 2**3
    assert large.get_layer(OUTPUT_LAYER).activation.__name__ == "sigmoid"


def test_convolutions_have_no_bias_so_batchnorm_folds_at_export():
    model = build_model(Config(image_size=48))
    convs = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.SeparableConv2D)
    ]
    assert convs and not any(layer.use_bias for layer in convs)


def test_keras_save_and_load_gives_the_same_outputs(tmp_path):
    keras.utils.set_random_seed(1)
    config = Config(image_size=48)
    model = compile_model(build_model(config), config)
    pixels = np.random.default_rng(1).integers(0, 256, (2, 48, 48, 1)).astype(np.float32)
    model.fit(pixels, np.array([[0.0], [1.0]]), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), rtol=1e-6
    )


def test_specificity_is_recall_of_the_negative_class():
    metric = Specificity()
    metric.update_state(np.array([0, 0, 0, 0, 1]), np.array([0.1, 0.2, 0.9, 0.4, 0.9]))
    assert float(metric.result()) == 0.75


def test_per_image_standardisation_ignores_a_films_overall_exposure():
    # input_normalization="per_image": a film and the same film with its contrast halved and
    # shifted brighter are the same input to the network after standardisation.
    keras.utils.set_random_seed(2)
    model = build_model(Config(image_size=48, input_normalization="per_image"))
    film = np.random.default_rng(2).uniform(20, 200, (1, 48, 48, 1)).astype(np.float32)
    brighter = film * 0.5 + 100
    np.testing.assert_allclose(
        model.predict(film, verbose=0), model.predict(brighter, verbose=0), atol=1e-4
    )
    plain = build_model(Config(image_size=48))
    assert "standardize" not in [layer.name for layer in plain.layers]


def test_normalization_clip_bounds_the_standardised_film_and_saves_as_plain_keras(tmp_path):
    """normalization_clip=c: the standardised film lies in [0, 2c] (shifted by c), a film with a
    few extreme pixels included, and the saved model loads without pneumocnn's code."""
    keras.utils.set_random_seed(3)
    config = Config(image_size=32, input_normalization="per_image", normalization_clip=2.0)
    model = build_model(config)
    film = np.full((1, 32, 32, 1), 100.0, np.float32)
    film[0, :2, :2] = 255.0  # a bright marker: about 8 standard deviations above the mean
    clipped = keras.Model(model.inputs, model.get_layer("standardize_clip").output)
    values = clipped.predict(film, verbose=0)
    assert values.min() >= 0.0 and values.max() == pytest.approx(4.0)
    path = tmp_path / "clip.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded.predict(film, verbose=0), model.predict(film, verbose=0))
    assert "standardize_clip" not in [
        layer.name for layer in build_model(Config(image_size=32)).layers
    ]


def test_cosine_schedule_needs_the_run_length():
    config = Config(image_size=48, lr_schedule="cosine", epochs=4)
    try:
        compile_model(build_model(config), config)
    except ValueError as error:
        assert "steps_per_epoch" in str(error)
    else:
        raise AssertionError("a cosine schedule without steps_per_epoch was accepted")
    model = compile_model(build_model(config), config, steps_per_epoch=10)
    schedule = model.optimizer._learning_rate  # Keras keeps the schedule object here
    assert float(schedule(0)) == pytest.approx(config.learning_rate)
    assert float(schedule(4 * 10)) == pytest.approx(config.learning_rate * 0.01)


def test_warm_restarts_return_to_the_full_rate_after_each_cycle():
    config = Config(image_size=48, lr_schedule="restarts", restart_epochs=2, epochs=6)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        compile_model(build_model(config), config)
    model = compile_model(build_model(config), config, steps_per_epoch=10)
    schedule = model.optimizer._learning_rate
    rates = [float(schedule(step)) for step in (0, 19, 20, 39, 40)]
    assert rates[0] == pytest.approx(config.learning_rate)
    assert rates[1] < config.learning_rate * 0.05  # the end of the first 2-epoch cycle
    assert rates[2] == pytest.approx(config.learning_rate)  # restarted
    assert rates[3] < config.learning_rate * 0.05
    assert rates[4] == pytest.approx(config.learning_rate)
    with pytest.raises(ValueError, match="restart_epochs"):
        Config(restart_epochs=0)


@pytest.mark.parametrize("task", ["binary", "subtype"])
def test_focal_loss_weighs_down_the_films_already_right(task):
    """Focal cross-entropy: a confident right call costs far less, relative to a wrong one,
    than with plain cross-entropy."""
    import numpy as np

    if task == "binary":
        truth, easy, hard = [[1.0]], [[0.9]], [[0.1]]
    else:
        truth, easy, hard = [[0.0, 1.0, 0.0]], [[0.05, 0.9, 0.05]], [[0.45, 0.1, 0.45]]
    ratios = {}
    for name in ("crossentropy", "focal"):
        config = Config(image_size=32, task=task, loss=name)
        loss = compile_model(build_model(config), config).loss
        truth_, easy_, hard_ = (np.array(v, np.float32) for v in (truth, easy, hard))
        ratios[name] = float(loss(truth_, easy_)) / float(loss(truth_, hard_))
    assert ratios["focal"] < ratios["crossentropy"] / 5
    with pytest.raises(ValueError, match="loss"):
        Config(loss="hinge")


def test_weight_averaging_swaps_averaged_weights_in_before_the_checkpoint(tmp_path):
    from pneumocnn.training.loop import make_callbacks

    config = Config(image_size=48, weight_averaging="ema")
    names = [type(c).__name__ for c in make_callbacks(config, tmp_path)]
    assert names.index("SwapEMAWeights") < names.index("BestModelCheckpoint")
    assert names.index("SwapEMAWeights") < names.index("EarlyStopping")
    model = compile_model(build_model(config), config)
    assert model.optimizer.use_ema
    for schedule in ("cosine", "restarts"):
        callbacks = make_callbacks(Config(lr_schedule=schedule), tmp_path)
        assert "ReduceLROnPlateau" not in [type(c).__name__ for c in callbacks]
