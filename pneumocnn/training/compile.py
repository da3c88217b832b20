"""The loss, the optimiser and the metrics a model trains with (`compile_model`).

Both tasks log the same pneumonia-vs-NORMAL figures: AUC, sensitivity and specificity on
P(pneumonia) (for three classes, 1 - P(NORMAL)).
"""

from __future__ import annotations

import keras

from pneumocnn.core.config import Config
from pneumocnn.network.model import training_classes_of


def _pneumonia_view(y_true, y_pred):
    """Collapses one-hot NORMAL/BACTERIAL/VIRAL targets and softmax outputs to pneumonia vs
    NORMAL: 1 - the NORMAL column. Two-class (sigmoid) inputs pass unchanged."""
    if len(y_pred.shape) == 2 and y_pred.shape[-1] is not None and y_pred.shape[-1] > 1:
        return 1.0 - y_true[..., :1], 1.0 - y_pred[..., :1]
    return y_true, y_pred


@keras.saving.register_keras_serializable(package="pneumocnn")
class Specificity(keras.metrics.Metric):
    """Recall of NORMAL: TN / (TN + FP) at a threshold on P(pneumonia).

    Keras has `Recall` (sensitivity) but no plain specificity; this combines its
    `TrueNegatives` and `FalsePositives` metrics. With a softmax over NORMAL / BACTERIAL /
    VIRAL, P(pneumonia) is 1 - P(NORMAL).

    Args:
        threshold: probability at or above which a prediction is positive. Defaults to 0.5.
        name: metric name. Defaults to "specificity".
    """

    def __init__(self, threshold: float = 0.5, name: str = "specificity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.true_negatives = keras.metrics.TrueNegatives(thresholds=threshold)
        self.false_positives = keras.metrics.FalsePositives(thresholds=threshold)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = _pneumonia_view(y_true, y_pred)
        self.true_negatives.update_state(y_true, y_pred, sample_weight)
        self.false_positives.update_state(y_true, y_pred, sample_weight)

    def result(self):
        tn = self.true_negatives.result()
        return keras.ops.divide_no_nan(tn, tn + self.false_positives.result())

    def reset_state(self):
        self.true_negatives.reset_state()
        self.false_positives.reset_state()

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


class _PneumoniaViewMixin:
    """Makes a Keras metric of pneumonia vs NORMAL read three-class targets and softmax outputs
    through `_pneumonia_view` (two-class inputs pass unchanged)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = _pneumonia_view(y_true, y_pred)
        return super().update_state(y_true, y_pred, sample_weight)


@keras.saving.register_keras_serializable(package="pneumocnn")
class PneumoniaAUC(_PneumoniaViewMixin, keras.metrics.AUC):
    """ROC AUC of pneumonia vs NORMAL: Keras's `AUC`, except that a softmax over NORMAL /
    BACTERIAL / VIRAL counts as P(pneumonia) = 1 - P(NORMAL) (for `train_on_subtypes`, whose
    checkpoint is chosen on the binary call it ships).

    Args:
        name: metric name. Defaults to "auc".
    """

    def __init__(self, name: str = "auc", **kwargs):
        super().__init__(name=name, **kwargs)


@keras.saving.register_keras_serializable(package="pneumocnn")
class Sensitivity(_PneumoniaViewMixin, keras.metrics.Recall):
    """Recall of pneumonia at a threshold on P(pneumonia): Keras's `Recall`, except that a
    softmax over NORMAL / BACTERIAL / VIRAL counts as P(pneumonia) = 1 - P(NORMAL).

    Args:
        name: metric name. Defaults to "sensitivity".
    """

    def __init__(self, name: str = "sensitivity", **kwargs):
        super().__init__(name=name, **kwargs)
# Focal cross-entropy's focusing parameter (`Config.loss="focal"`): the value of Lin et al. (2017).
FOCAL_GAMMA = 2.0


def compile_model(
    model: keras.Model, config: Config, steps_per_epoch: int | None = None
) -> keras.Model:
    """Compiles `model` with Adam, cross-entropy (or focal cross-entropy, `config.loss`), and the
    metrics the reports use.

    Compile the `fitting_model`: with `train_on_subtypes`, the three-class softmax trains with
    the subtype task's loss. Metrics: accuracy, ROC AUC (for three classes, over the flattened
    one-vs-rest outputs; with `train_on_subtypes`, of pneumonia vs NORMAL), sensitivity
    (recall of pneumonia) and specificity (recall of NORMAL), the last two at 0.5 on
    P(pneumonia), which for three classes is 1 - P(NORMAL): the binary task and the subtype
    task log the same pneumonia-vs-normal numbers.

    Args:
        model: from `build_model`.
        config: uses `task`, `train_on_subtypes`, `learning_rate`, `loss`, `label_smoothing`,
            `lr_schedule`, `epochs`, `restart_epochs` and `weight_averaging`.
        steps_per_epoch: training steps an epoch, which `lr_schedule="cosine"` needs to span
            `epochs` (and `"restarts"` to span `restart_epochs`). Defaults to `None`.

    Returns:
        The same model, compiled.
    """
    learning_rate = config.learning_rate
    if config.lr_schedule in ("cosine", "restarts"):
        if not steps_per_epoch:
            raise ValueError(
                f"lr_schedule={config.lr_schedule!r} decays over a number of epochs and needs "
                f"their length. Received: steps_per_epoch={steps_per_epoch!r}. Pass the "
                "training steps an epoch."
            )
        if config.lr_schedule == "cosine":
            learning_rate = keras.optimizers.schedules.CosineDecay(
                config.learning_rate, decay_steps=config.epochs * steps_per_epoch, alpha=0.01
            )
        else:
            # Warm restarts (Loshchilov and Hutter, 2017): equal cycles at the full rate.
            learning_rate = keras.optimizers.schedules.CosineDecayRestarts(
                config.learning_rate,
                first_decay_steps=config.restart_epochs * steps_per_epoch,
                t_mul=1.0,
                m_mul=1.0,
                alpha=0.01,
            )
    focal = {"gamma": FOCAL_GAMMA} if config.loss == "focal" else None
    if training_classes_of(config) > 2:
        loss = (
            keras.losses.CategoricalFocalCrossentropy(
                **focal, label_smoothing=config.label_smoothing
            )
            if focal
            else keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        )
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss = (
            keras.losses.BinaryFocalCrossentropy(**focal, label_smoothing=config.label_smoothing)
            if focal
            else keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing)
        )
        accuracy = keras.metrics.BinaryAccuracy(name="accuracy")
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate, use_ema=config.weight_averaging == "ema", ema_momentum=0.99
        ),
        loss=loss,
        metrics=[
            accuracy,
            PneumoniaAUC() if config.binary_from_subtypes else keras.metrics.AUC(name="auc"),
            Sensitivity(),
            Specificity(),
        ],
    )
    return model
