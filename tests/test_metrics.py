import numpy as np
import pytest

from pneumocnn.core.task import class_probabilities
from pneumocnn.evaluation import metrics
from pneumocnn.evaluation.metrics import expected_calibration_error, headline, metrics_at
from pneumocnn.evaluation.stability import pixel_noise_sensitivity
from pneumocnn.evaluation.thresholds import choose_threshold


def test_youden_threshold_separates_cleanly_separable_scores():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    threshold = choose_threshold(labels, scores)
    assert 0.3 < threshold <= 0.6
    at = metrics_at(labels, scores, threshold, ["NORMAL", "PNEUMONIA"])
    assert at["sensitivity"] == at["specificity"] == 1.0


def test_target_sensitivity_gives_best_specificity_reaching_the_target():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.5, 0.7, 0.3, 0.6, 0.8, 0.9])
    threshold = choose_threshold(labels, scores, target_sensitivity=1.0)
    assert threshold == pytest.approx(0.3)  # the highest threshold keeping every positive
    threshold = choose_threshold(labels, scores, target_sensitivity=0.75)
    assert threshold == pytest.approx(0.6)


def test_threshold_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.array([1, 1]), np.array([0.2, 0.9]))


def test_expected_calibration_error_is_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    probabilities = rng.uniform(size=20000)
    labels = (rng.uniform(size=20000) < probabilities).astype(int)
    assert expected_calibration_error(labels, probabilities) < 0.02
    overconfident = np.where(probabilities > 0.5, 0.99, 0.01)
    assert expected_calibration_error(labels, overconfident) > 0.2


def test_metrics_agree_with_the_confusion_matrix():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.8, 0.4, 0.7, 0.95, 0.85])
    report = metrics.compute_metrics(labels, scores, 0.5, ["NORMAL", "PNEUMONIA"])
    (tn, fp), (fn, tp) = report["at_threshold"]["confusion_matrix"]
    assert (tn, fp, fn, tp) == (3, 1, 1, 5)
    assert report["at_threshold"]["sensitivity"] == tp / (tp + fn)
    assert report["at_threshold"]["specificity"] == tn / (tn + fp)
    assert report["at_threshold"]["per_class"]["PNEUMONIA"]["recall"] == tp / (tp + fn)
    assert report["images_per_class"] == [4, 6]


def test_a_model_with_one_output_for_every_film_still_gets_a_usable_threshold():
    # The +inf point of the ROC curve (nothing positive) is never chosen: the threshold stays
    # inside (0, 1), which the metadata requires.
    labels = np.array([0, 1, 0, 1])
    threshold = choose_threshold(labels, np.full(4, 0.62))
    assert threshold == pytest.approx(0.62)


def test_a_binary_model_gives_the_same_metrics_as_one_column_or_one_per_class():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50)
    scores = rng.uniform(size=50).astype(np.float32)
    one = metrics.compute_metrics(labels, scores, 0.4, ["NORMAL", "PNEUMONIA"])
    per_class = metrics.compute_metrics(
        labels, class_probabilities(scores), 0.4, ["NORMAL", "PNEUMONIA"]
    )
    assert one == per_class


def test_the_subtype_view_of_a_pneumonia_call_matches_the_binary_rule():
    # Pneumonia when 1 - P(NORMAL) reaches the threshold: the binary metrics of a subtype
    # model are those of a binary model whose P(PNEUMONIA) is that sum.
    labels = np.array([0, 1, 2, 0, 2, 1])
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.2, 0.5, 0.3],
            [0.3, 0.3, 0.4],
            [0.45, 0.5, 0.05],
            [0.8, 0.1, 0.1],
            [0.1, 0.1, 0.8],
        ]
    )
    subtype = metrics.compute_metrics(labels, probabilities, 0.5, ["NORMAL", "BACTERIAL", "VIRAL"])
    binary = metrics.compute_metrics(
        (labels > 0).astype(int), 1 - probabilities[:, 0], 0.5, ["NORMAL", "PNEUMONIA"]
    )
    assert subtype["binary"] == binary


def test_parity_counts_the_decisions_that_differ():
    labels = np.array([0, 0, 1, 1])
    reference = np.array([0.1, 0.2, 0.8, 0.9])
    candidate = np.array([0.6, 0.2, 0.4, 0.9])  # two of four decisions flip
    parity = metrics.parity(labels, reference, candidate, 0.5, ["NORMAL", "PNEUMONIA"])
    assert parity["agreement"] == 0.5
    assert parity["auc_float"] == 1.0 and parity["auc_drop"] > 0
    assert parity["max_abs_difference"] == pytest.approx(0.5)
    assert parity["pneumonia_agreement"] == 0.5


def test_parity_of_a_subtype_model_counts_pneumonia_calls_apart_from_the_subtype():
    labels = np.array([0, 1, 2, 2])
    reference = np.array([[0.9, 0.05, 0.05], [0.1, 0.5, 0.4], [0.1, 0.3, 0.6], [0.4, 0.3, 0.3]])
    # Film 2: BACTERIAL becomes VIRAL (pneumonia either way); film 4: BACTERIAL (a tie between
    # the subtypes, given to the first) becomes NORMAL.
    candidate = np.array([[0.9, 0.05, 0.05], [0.1, 0.4, 0.5], [0.1, 0.3, 0.6], [0.6, 0.2, 0.2]])
    parity = metrics.parity(labels, reference, candidate, 0.5, ["NORMAL", "BACTERIAL", "VIRAL"])
    assert parity["agreement"] == 0.5
    assert parity["pneumonia_agreement"] == 0.75


def test_headline_of_a_subtype_report_gives_its_pneumonia_figures_and_three_class_ones():
    labels = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.eye(3)[labels] * 0.8 + 0.2 / 3
    report = metrics.compute_metrics(labels, probabilities, 0.5, ["NORMAL", "BACTERIAL", "VIRAL"])
    figures = headline(report)
    assert figures["accuracy"] == report["binary"]["at_threshold"]["accuracy"] == 1.0
    assert figures["subtype_accuracy"] == 1.0


def test_bootstrap_resamples_patients_not_films():
    from pneumocnn.evaluation.uncertainty import bootstrap_intervals

    # Two patients, each with 50 identical films: resampling patients can only ever see the
    # two patients' values, so the mean's interval spans them; resampling films would
    # squeeze it towards 0.5.
    values = np.r_[np.zeros(50), np.ones(50)]
    patients = ["a"] * 50 + ["b"] * 50
    low, high = bootstrap_intervals(
        lambda index: {"mean": float(values[index].mean())}, patients, resamples=400
    )["mean"]
    assert low == 0.0 and high == 1.0


def test_bootstrap_interval_holds_the_point_estimate_and_narrows_with_more_patients():
    from pneumocnn.evaluation.metrics import pneumonia_figures
    from pneumocnn.evaluation.uncertainty import bootstrap_intervals

    rng = np.random.default_rng(0)

    def width(n):
        labels = rng.integers(0, 2, n)
        scores = np.clip(labels * 0.3 + rng.uniform(0, 0.7, n), 0, 1)
        point = pneumonia_figures(labels, scores, 0.5)["accuracy"]
        low, high = bootstrap_intervals(
            lambda i: pneumonia_figures(labels[i], scores[i], 0.5),
            [str(i) for i in range(n)],
            resamples=300,
        )["accuracy"]
        assert low <= point <= high
        return high - low

    assert width(2000) < width(50)


def test_specificity_at_sensitivity_is_the_best_reaching_the_target():
    from pneumocnn.evaluation.metrics import specificity_at_sensitivity

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.4, 0.7, 0.9, 0.95])
    assert specificity_at_sensitivity(labels, scores, 1.0) == 0.75  # threshold 0.4
    # 0.75 sensitivity: threshold 0.7 keeps the NORMAL film at 0.8 positive (specificity
    # 0.75); 0.9 would reach only 0.5 sensitivity.
    assert specificity_at_sensitivity(labels, scores, 0.75) == 0.75
    assert specificity_at_sensitivity(labels, scores, 0.5) == 1.0


def test_groups_count_right_calls_per_group():
    from pneumocnn.evaluation.uncertainty import group_recalls

    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.8, 0.2])
    groups = ["NORMAL IM-", "NORMAL IM-", "PNEUMONIA viral", "PNEUMONIA viral"]
    result = group_recalls(labels, scores, 0.5, groups)
    assert result == {
        "NORMAL IM-": {"films": 2, "recall": 0.5},
        "PNEUMONIA viral": {"films": 2, "recall": 0.5},
    }


def test_group_recalls_carry_patient_bootstrap_intervals_when_patients_are_given():
    from pneumocnn.evaluation.uncertainty import group_recalls

    # 40 NORMAL films of 20 patients, each patient's two films both right or both wrong (half
    # the patients), and 10 viral films all right.
    labels = np.array([0] * 40 + [1] * 10)
    scores = np.array([0.1, 0.1, 0.9, 0.9] * 10 + [0.8] * 10)
    patients = [f"n{i // 2}" for i in range(40)] + [f"v{i}" for i in range(10)]
    groups = ["NORMAL IM-"] * 40 + ["PNEUMONIA viral"] * 10
    result = group_recalls(labels, scores, 0.5, groups, patients, resamples=400)
    low, high = result["NORMAL IM-"]["interval"]
    assert result["NORMAL IM-"]["recall"] == 0.5
    # Twenty patients, not forty films: about +-0.21 (resampling films would give +-0.15).
    assert 0.2 < low < 0.33 and 0.69 < high < 0.8
    assert result["PNEUMONIA viral"] == {"films": 10, "recall": 1.0, "interval": [1.0, 1.0]}


def test_bacterial_vs_viral_accuracy_ignores_normal_films_and_the_threshold():
    from pneumocnn.evaluation.metrics import compute_metrics

    labels = np.array([0, 1, 2, 2])
    probabilities = np.array([[0.1, 0.8, 0.1], [0.9, 0.07, 0.03], [0.2, 0.3, 0.5], [0.2, 0.5, 0.3]])
    report = compute_metrics(labels, probabilities, 0.5, ["NORMAL", "BACTERIAL", "VIRAL"])
    assert report["bacterial_vs_viral_accuracy"] == 2 / 3


def test_pixel_noise_sensitivity_measures_how_far_one_grey_level_moves_the_output():
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1)).astype(np.uint8)

    def steep(x):  # P(pneumonia) follows the mean pixel, 0.01 per grey level
        return np.clip(0.5 + 0.01 * (x.reshape(len(x), -1).mean(axis=1) - 128), 0, 1)

    def steady(x):
        return np.full(len(x), 0.4)

    moved = pixel_noise_sensitivity(steep, images, draws=3, seed=1)
    assert moved["films"] == 20 and moved["draws"] == 3
    # The mean of 64 pixels with -1/0/+1 noise moves by about 0.1 grey level: 0.001 or so.
    assert 0.0 < moved["mean_change"] <= moved["p99_change"] <= moved["max_change"] <= 0.01
    assert pixel_noise_sensitivity(steep, images, draws=3, seed=1) == moved
    assert pixel_noise_sensitivity(steady, images)["max_change"] == 0.0
