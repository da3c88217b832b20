"""Tables of the adaptation study, made from its saved results only (`results/*.json`).

For each row: the out-of-fold figures of each seed (ROC AUC; specificity at the first ROC point
reaching 96% sensitivity; and accuracy, sensitivity and specificity at the threshold the command
would choose, the Neyman-Pearson bound for 96% sensitivity with confidence 0.95), their mean and
spread over seeds, and 95% intervals of the seed mean from 1,000 patient-bootstrap resamples.
Then how often each threshold rule holds 96% sensitivity on new patients: in 200 random halvings
of the patients, the threshold chosen on one half's out-of-fold scores, the sensitivity measured
on the other half. The generic model's figures on the same films come last (its recipe and
threshold were chosen on them).

Usage (writes the tables into README.md between its markers, and prints them):

    python experiments/adaptation/tables.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from pneumocnn.core.adapt_config import AdaptConfig
from pneumocnn.core.locations import default_model
from pneumocnn.core.task import pneumonia_labels, pneumonia_probability
from pneumocnn.data.images import load_images
from pneumocnn.evaluation.thresholds import choose_threshold, sensitivity_bound_threshold
from pneumocnn.evaluation.uncertainty import bootstrap_intervals
from pneumocnn.runtime.lite import LiteModel

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"
TARGET, CONFIDENCE = 0.96, 0.95
FIGURES = ("auc", "spec_at_96", "np_accuracy", "np_sensitivity", "np_specificity")


def figures(positive: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """The row's figures for one seed's out-of-fold scores (or a resample of them)."""
    if positive.all() or not positive.any():
        return dict.fromkeys(FIGURES, float("nan"))
    point = choose_threshold(positive.astype(int), score, TARGET)
    try:
        bound = sensitivity_bound_threshold(positive.astype(int), score, TARGET, CONFIDENCE)
        np_sens, np_spec = bound["sensitivity"], bound["specificity"]
        np_acc = float(np.mean((score >= bound["threshold"]) == positive))
    except ValueError:  # a resample with too few pneumonia films for the bound
        np_sens = np_spec = np_acc = float("nan")
    return {
        "auc": float(skm.roc_auc_score(positive, score)),
        "spec_at_96": float(np.mean(score[~positive] < point)),
        "np_accuracy": np_acc,
        "np_sensitivity": np_sens,
        "np_specificity": np_spec,
    }


def seed_figures(results: list[dict]) -> list[dict[str, float]]:
    """Each seed's figures (see `figures`) from its saved out-of-fold scores."""
    return [
        figures(
            pneumonia_labels(np.asarray(r["labels"])).astype(bool),
            pneumonia_probability(np.asarray(r["probabilities"])),
        )
        for r in results
    ]


def load_rows() -> dict[str, list[dict]]:
    """Every row's saved results by name (`<tag>-<row>` for another model's), seeds in order."""
    rows: dict[str, list[dict]] = {}
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        name = f"{result['tag']}-{result['row']}" if result.get("tag") else result["row"]
        rows.setdefault(name, []).append(result)
    return {name: sorted(results, key=lambda r: r["seed"]) for name, results in rows.items()}


def is_default(result: dict) -> bool:
    """Whether a result ran `pneumocnn.adapt`'s default recipe (today's `AdaptConfig`): the
    default is defined once, there, and the rows keep the names of what they changed."""
    defaults = AdaptConfig().to_dict()
    return all(
        result["recipe"].get(key, value) == value
        for key, value in defaults.items()
        if key not in ("seed", "deterministic")
    )


def default_row(rows: dict[str, list[dict]], tag: str = "") -> str:
    """The name of the row that ran the default recipe on the model `tag` names (the binary
    model for none)."""
    names = [
        name
        for name, results in rows.items()
        if all(r.get("tag", "") == tag and is_default(r) for r in results)
    ]
    if len(names) != 1:
        raise ValueError(f"Expected one row with the default recipe (tag '{tag}'), found {names}")
    return names[0]


def seed_mean_intervals(results: list[dict], resamples: int = 1000) -> dict[str, list[float]]:
    """95% patient-bootstrap intervals of the seeds' mean of each figure (all seeds score the
    same films, so one resample of patients applies to every seed)."""
    positive = pneumonia_labels(np.asarray(results[0]["labels"])).astype(bool)
    scores = [pneumonia_probability(np.asarray(r["probabilities"])) for r in results]

    def statistic(index: np.ndarray) -> dict[str, float]:
        per_seed = [figures(positive[index], score[index]) for score in scores]
        return {key: float(np.nanmean([f[key] for f in per_seed])) for key in FIGURES}

    return bootstrap_intervals(statistic, results[0]["patients"], resamples)


def subtype_intervals(results: list[dict], resamples: int = 1000) -> dict[str, list[float]]:
    """95% patient-bootstrap intervals of the seeds' mean of each three-class figure."""

    def statistic(index: np.ndarray) -> dict[str, float]:
        per_seed = [subtype_figures(r, index) for r in results]
        return {key: float(np.nanmean([f[key] for f in per_seed])) for key in SUBTYPE_FIGURES}

    return bootstrap_intervals(statistic, results[0]["patients"], resamples)


def coverage(result: dict, halvings: int = 200, seed: int = 0) -> dict[str, float]:
    """Share of patient halvings where a threshold chosen on one half reaches 96% sensitivity on
    the other: for the Neyman-Pearson bound and for the plain point estimate."""
    positive = pneumonia_labels(np.asarray(result["labels"])).astype(bool)
    score = pneumonia_probability(np.asarray(result["probabilities"]))
    patients = np.asarray(result["patients"])
    unique = np.unique(patients)
    rng = np.random.default_rng(seed)
    held = {"bound": [], "point": []}
    for _ in range(halvings):
        first = np.isin(patients, rng.permutation(unique)[: len(unique) // 2])
        second = ~first
        try:
            bound = sensitivity_bound_threshold(
                positive[first].astype(int), score[first], TARGET, CONFIDENCE
            )["threshold"]
        except ValueError:
            continue
        point = choose_threshold(positive[first].astype(int), score[first], TARGET)
        for name, threshold in (("bound", bound), ("point", point)):
            held[name].append(np.mean(score[second & positive] >= threshold) >= TARGET)
    return {name: float(np.mean(values)) for name, values in held.items()}


SUBTYPE_FIGURES = ("three_class_accuracy", "normal_recall", "bacterial_vs_viral")


def subtype_figures(result: dict, index: np.ndarray | None = None) -> dict[str, float]:
    """A subtype model's three-class figures at the bound's threshold, out of fold (on the films
    `index` picks, all by default)."""
    labels = np.asarray(result["labels"])
    probabilities = np.asarray(result["probabilities"])
    if index is not None:
        labels, probabilities = labels[index], probabilities[index]
    try:
        threshold = sensitivity_bound_threshold(labels, probabilities, TARGET, CONFIDENCE)
    except ValueError:  # a resample with too few pneumonia films for the bound
        return dict.fromkeys(SUBTYPE_FIGURES, float("nan"))
    threshold = threshold["threshold"]
    decided = np.where(
        pneumonia_probability(probabilities) >= threshold,
        1 + np.argmax(probabilities[:, 1:], axis=1),
        0,
    )
    pneumonia = labels > 0
    return {
        "three_class_accuracy": float(np.mean(decided == labels)),
        "normal_recall": float(np.mean(decided[~pneumonia] == 0)),
        "bacterial_vs_viral": float(
            np.mean(1 + np.argmax(probabilities[pneumonia, 1:], axis=1) == labels[pneumonia])
        ),
    }


def averaged(*results: dict) -> dict:
    """A result whose P(pneumonia) is the mean of several results' on the same films (an
    ensemble of the adapted models, scored out of fold: no member's fold model learnt from the
    film's patient, whatever their folds)."""
    assert all(result["files"] == results[0]["files"] for result in results)
    score = np.mean([pneumonia_probability(np.asarray(r["probabilities"])) for r in results], 0)
    return {**results[0], "probabilities": np.c_[1 - score, score].tolist()}


def binary_decides_normal(binary: dict, subtype: dict) -> dict:
    """A three-class result whose P(pneumonia) is the binary model's and whose split of it into
    bacterial and viral is the subtype model's (same films, same seed): the binary model decides
    NORMAL, the subtype model which pneumonia. Both out of fold, as `averaged` says."""
    assert binary["files"] == subtype["files"]
    score = pneumonia_probability(np.asarray(binary["probabilities"]))
    split = np.asarray(subtype["probabilities"])[:, 1:]
    shares = split / np.maximum(split.sum(axis=1, keepdims=True), 1e-12)
    return {**subtype, "probabilities": np.c_[1 - score, score[:, None] * shares].tolist()}


def two_model_rows(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """`binary_decides_normal` for every row run on both models, seed by seed (a post-hoc
    analysis of 2026-12-08: see the README's findings)."""
    made = {}
    for row in list(rows):
        if f"subtype-{row}" in rows and not row.startswith("subtype-"):
            by_seed = {r["seed"]: r for r in rows[f"subtype-{row}"]}
            made[f"subtype-{row}, NORMAL by {row}"] = [
                binary_decides_normal(r, by_seed[r["seed"]])
                for r in rows[row]
                if r["seed"] in by_seed
            ]
    return made


# Seed ensembles of the default recipe: disjoint groups of this many seeds (1-2, 3-4, ...).
ENSEMBLE_SIZES = (2, 5)


def seed_ensembles(results: list[dict], members: int) -> list[dict]:
    """The default recipe's seeds averaged in disjoint groups of `members` (seeds in order):
    each group is one ensemble of `members` adapted models, scored out of fold as `averaged`
    says; each member learnt from about four fifths of the site's films."""
    return [  # load_rows keeps each row's seeds in order
        averaged(*results[start : start + members])
        for start in range(0, len(results) - members + 1, members)
    ]


def generic_row(result: dict) -> dict[str, float]:
    """The generic (shipped, not adapted) model on the same films, from its own outputs."""
    names = result["files"]
    folder = Path(result.get("site_dir", "../shared/chest_xray/test"))
    paths = [next(folder.glob(f"*/{name}")) for name in names]
    model = LiteModel(default_model("int8")).require_grayscale()
    images, kept, _ = load_images(paths, model.image_size)
    positive = pneumonia_labels(np.asarray(result["labels"]))[kept].astype(bool)
    score = model.task.pneumonia(model.predict_proba(images))
    patients = np.asarray(result["patients"])[kept]
    intervals = bootstrap_intervals(
        lambda index: figures(positive[index], score[index]), patients, 1000
    )
    return {"point": figures(positive, score), "interval": intervals}


def fmt(values: list[float], interval: list[float] | None = None, digits: int = 3) -> str:
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return "n/a"
    text = f"{np.mean(values):.{digits}f}"
    if len(values) > 1:
        text += f" ± {np.std(values):.{digits}f}"
    if interval is not None:
        text += f" [{interval[0]:.{digits}f}-{interval[1]:.{digits}f}]"
    return text


def welch_rule(rows: dict[str, list[dict]], incumbent: str, challenger: str) -> dict | None:
    """The study's rule for changing a default, written before the seeds it decides ran: the
    `challenger` replaces the `incumbent` only if its seeds' specificity at the bound is higher
    by a one-sided Welch t-test at p < 0.05 (`scipy.stats.ttest_ind`, `equal_var=False`) and its
    mean ROC AUC is at most 0.005 below. `None` while either has fewer than two seeds."""
    if len(rows.get(incumbent, [])) < 2 or len(rows.get(challenger, [])) < 2:
        return None
    before, after = seed_figures(rows[incumbent]), seed_figures(rows[challenger])
    spec = [[f["np_specificity"] for f in figures] for figures in (before, after)]
    aucs = [[f["auc"] for f in figures] for figures in (before, after)]
    auc = [float(np.mean(values)) for values in aucs]
    test = stats.ttest_ind(spec[1], spec[0], equal_var=False, alternative="greater")
    intervals = [seed_mean_intervals(rows[name]) for name in (incumbent, challenger)]
    return {
        "seeds": (len(spec[0]), len(spec[1])),
        # Each row's seed mean, ± the seeds' spread, [its patient-bootstrap interval].
        "specificity": tuple(
            fmt(values, interval["np_specificity"])
            for values, interval in zip(spec, intervals, strict=True)
        ),
        "auc": tuple(
            fmt(values, interval["auc"]) for values, interval in zip(aucs, intervals, strict=True)
        ),
        "p": float(test.pvalue),
        "adopted": bool(test.pvalue < 0.05 and auc[1] >= auc[0] - 0.005),
    }


def rule_line(rule: dict, incumbent: str, challenger: str) -> str:
    """One sentence giving a rule's inputs and its verdict."""
    return (
        f"`{challenger}` ({rule['seeds'][1]} seeds) against `{incumbent}` ({rule['seeds'][0]} "
        f"seeds): specificity at the bound {rule['specificity'][1]} vs "
        f"{rule['specificity'][0]}, one-sided Welch t-test p = {rule['p']:.3f}; mean ROC "
        f"AUC {rule['auc'][1]} vs {rule['auc'][0]}: "
        + ("adopted." if rule["adopted"] else "not adopted.")
    )


def decisions(rows: dict[str, list[dict]]) -> list[str]:
    """The rules written before the seeds they decide ran (README), with their verdicts."""
    lines = []
    first = welch_rule(rows, "augment", "no_augment")
    if first:  # 2026-12-03, seeds 6-10: `augment` was the default until then
        lines.append(
            "- Seeds 6-10 (2026-12-03), the training augmentation in the fine-tuning or not: "
            + rule_line(first, "augment", "no_augment")
            + " (Its exported model then failed the int8 check: see the findings.)"
        )
    subtype = welch_rule(rows, "subtype-no_augment", "subtype-augment")
    if subtype and min(subtype["seeds"]) >= 5:  # 2026-12-07: five seeds of each
        lines.append(
            "- The subtype model with augmentation or not (2026-12-07, five seeds each): "
            + rule_line(subtype, "subtype-no_augment", "subtype-augment")
        )
    if "no_augment" in rows:
        base = [f["np_specificity"] for f in seed_figures(rows["no_augment"])]
        base_text = fmt(base, seed_mean_intervals(rows["no_augment"])["np_specificity"])
        screened = ("epochs_6", "late_layers", "lr_1e-3", "mix_800")  # one field changed each
        names = [f"no_augment_{change}" for change in screened]
        for name in (name for name in names if name in rows):
            values = [f["np_specificity"] for f in seed_figures(rows[name])]
            verdict = "goes on to ten seeds" if np.mean(values) > np.mean(base) else "stops there"
            lines.append(
                f"- A change of one field without augmentation (2026-12-07): `{name}`, "
                f"{len(rows[name])} seeds, specificity at the bound "
                f"{fmt(values, seed_mean_intervals(rows[name])['np_specificity'])} against "
                f"`no_augment`'s {len(base)}-seed {base_text}: {verdict}."
            )
    mixup = welch_rule(rows, "augment", "no_augment_mixup")
    if mixup and mixup["seeds"][1] >= 10:  # 2026-12-07, written before its seeds ran
        lines.append(
            "- A default that exports (2026-12-07): "
            + rule_line(mixup, "augment", "no_augment_mixup")
            + " (The rule also asks that its command export on these films: see the findings.)"
        )
    wide = welch_rule(rows, "no_augment_mixup", WIDE_POOLED)
    if wide and wide["seeds"][1] >= 6:  # 2026-12-07, written before its seeds ran
        lines.append(
            "- A wider base (2026-12-07): " + rule_line(wide, "no_augment_mixup", WIDE_POOLED)
        )
    lines += screen_0812(rows)
    return [
        "",
        "Rules written before the seeds they decide ran, and their verdicts (seed mean ± "
        "standard deviation [95% patient-bootstrap interval of the seed mean]; the development "
        "half, which these rules chose on):",
        "",
    ] + lines


# 2026-12-08, written before their seeds ran: one field of the default changed each, screened
# on seeds 1-3; the best screener whose mean specificity at the bound passes the default's
# ten-seed mean goes on to ten fresh seeds (4-13), and those alone decide, by `welch_rule`
# against the default's seeds 1-10 (seeds 1-3 chose it, so they do not also confirm it).
SCREENED_0812 = tuple(
    f"no_augment_mixup_{change}" for change in ("bn_trainable", "epochs_24", "alpha_06", "lr_1e-4")
)
SCREEN_SEEDS, CONFIRM_SEEDS = (1, 2, 3), tuple(range(4, 14))


def screen_0812(rows: dict[str, list[dict]]) -> list[str]:
    """The verdicts of the 2026-12-08 screen and its confirmation (see `SCREENED_0812`)."""
    if "no_augment_mixup" not in rows:
        return []
    default = rows["no_augment_mixup"]
    base = [f["np_specificity"] for f in seed_figures(default)]
    base_text = fmt(base, seed_mean_intervals(default)["np_specificity"])
    screened = {}
    for name in SCREENED_0812:
        results = [r for r in rows.get(name, []) if r["seed"] in SCREEN_SEEDS]
        if len(results) == len(SCREEN_SEEDS):
            screened[name] = results
    if not screened:
        return []
    specificity = {
        name: [f["np_specificity"] for f in seed_figures(results)]
        for name, results in screened.items()
    }
    best = max(specificity, key=lambda name: np.mean(specificity[name]))
    chosen = best if np.mean(specificity[best]) > np.mean(base) else None
    lines = []
    for name, results in screened.items():
        values = specificity[name]
        verdict = "goes on to ten fresh seeds" if name == chosen else "stops there"
        lines.append(
            f"- One field of the default changed (2026-12-08): `{name}`, seeds 1-3, specificity "
            f"at the bound {fmt(values, seed_mean_intervals(results)['np_specificity'])} against "
            f"`no_augment_mixup`'s {len(base)}-seed {base_text}: {verdict}."
        )
    if len(screened) < len(SCREENED_0812):
        lines.append("- (The 2026-12-08 screen is not complete: its verdicts may change.)")
    fresh = [r for r in rows.get(chosen or "", []) if r["seed"] in CONFIRM_SEEDS]
    if len(screened) == len(SCREENED_0812) and len(fresh) == len(CONFIRM_SEEDS):
        confirm = f"{chosen}, seeds 4-13"
        pair = {"no_augment_mixup": default, confirm: fresh}
        rule = welch_rule(pair, "no_augment_mixup", confirm)
        lines.append(
            "- Its confirmation on fresh seeds (2026-12-08): "
            + rule_line(rule, "no_augment_mixup", confirm)
            + " (Adopting it also asks that `pneumocnn.adapt saved_models` export on these "
            "films: see the findings.)"
        )
    return lines


# The wider base (128 px, 32 filters, 4 blocks), two generic seeds adapted three times each
# (`--tag wide1`, `--tag wide2`): pooled for its rule.
WIDE_ROWS = ("wide1-no_augment_mixup", "wide2-no_augment_mixup")
WIDE_POOLED = "wide1+2-no_augment_mixup"


def pool_wide(rows: dict[str, list[dict]]) -> None:
    """Adds the wider base's pooled row (both generic seeds' adaptations) when both ran."""
    if all(name in rows for name in WIDE_ROWS):
        rows[WIDE_POOLED] = [result for name in WIDE_ROWS for result in rows[name]]


def table() -> str:
    rows = load_rows()
    default, subtype_default = default_row(rows), default_row(rows, "subtype")
    shown = {
        default: f"default ({default})",
        subtype_default: f"subtype-default ({subtype_default})",
    }
    pairs = [
        (f"{row} + subtype-{row}", rows[row], rows[f"subtype-{row}"])
        for row in list(rows)
        if f"subtype-{row}" in rows
    ]
    for name, first, second in pairs:
        by_seed = {r["seed"]: r for r in second}
        rows[name] = [averaged(r, by_seed[r["seed"]]) for r in first if r["seed"] in by_seed]
    members = {name: 2 for name, _, _ in pairs}
    pool_wide(rows)
    for size in ENSEMBLE_SIZES:
        if len(rows[default]) >= 2 * size:
            name = f"{default}, {size} seeds averaged"
            rows[name], members[name] = seed_ensembles(rows[default], size), size
    lines = [
        "| row | recipe (changed fields) | seeds | ROC AUC | specificity at 96% sensitivity "
        "(point) | accuracy at the bound | sensitivity at the bound | specificity at the bound | "
        "bound holds 96% / point holds 96% (halvings) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, results in rows.items():  # for an ensemble row, "seeds" counts its ensembles
        row_file = HERE / "rows" / f"{results[0]['row']}.json"
        changed = (
            {"members": members[name]} if name in members else json.loads(row_file.read_text())
        )
        per_seed = seed_figures(results)
        intervals = seed_mean_intervals(results)
        held = [coverage(r) for r in results]
        cells = [fmt([f[key] for f in per_seed], intervals[key]) for key in FIGURES]
        lines.append(
            f"| {shown.get(name, name)} | {json.dumps(changed)} | {len(results)} | "
            + " | ".join(cells)
            + f" | {np.mean([h['bound'] for h in held]):.0%} / "
            f"{np.mean([h['point'] for h in held]):.0%} |"
        )
    subtype_rows = {name: results for name, results in rows.items() if name.startswith("subtype-")}
    subtype_rows.update(two_model_rows(rows))
    if subtype_rows:
        lines += [
            "",
            "Subtype model, three-class figures at the bound's threshold (out of fold; mean ± "
            "standard deviation over seeds [95% patient-bootstrap interval of the seed mean]):",
            "",
            "| row | seeds | three-class accuracy | NORMAL recall | bacterial vs viral |",
            "|---|---|---|---|---|",
        ]
        for name, results in subtype_rows.items():
            figures3 = [subtype_figures(r) for r in results]
            intervals3 = subtype_intervals(results)
            lines.append(
                f"| {shown.get(name, name)} | {len(results)} | "
                + " | ".join(
                    fmt([f[key] for f in figures3], intervals3[key]) for key in SUBTYPE_FIGURES
                )
                + " |"
            )
        lines += [
            "",
            "Rows `subtype-<row>, NORMAL by <row>`: the binary model's P(pneumonia) and its bound "
            "decide NORMAL, the subtype model's split it into bacterial and viral (same seed, "
            "both out of fold; a two-model three-class answer, looked at after both rows ran, "
            "so chosen on these films).",
        ]
    lines += decisions(rows)
    first = next(r for name, results in rows.items() if "subtype" not in name for r in results)
    generic = generic_row(first)
    lines += [
        "",
        f"Generic model, not adapted (`{default_model('int8').name}`; its recipe and threshold "
        f"were chosen on these films, so optimistic; 95% patient-bootstrap intervals): "
        f"ROC AUC {fmt([generic['point']['auc']], generic['interval']['auc'])}, "
        f"specificity at 96% sensitivity "
        f"{fmt([generic['point']['spec_at_96']], generic['interval']['spec_at_96'])}.",
    ]
    return "\n".join(lines)


def main() -> int:
    text = table()
    print(text)
    if README.exists():
        readme = README.read_text()
        if BEGIN in readme and END in readme:
            head, rest = readme.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
