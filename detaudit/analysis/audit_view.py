"""The view model of a training audit: every decision made once, for the terminal, Markdown, HTML and JSON.

Pure Python. :class:`AuditView` reads the stored audit (audit.json) and says
what to show: the three answers, the verdict, the culprit, the tensors that
differ, the random layers, the pipeline's candidate sources and the checks
that apply to the devices present. Renderers only format it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from detaudit.core.audit_outcome import Answer, AuditVerdict, Question, Stage

__all__ = ["AuditView", "Culprit", "answers_of", "describe_divergence", "upgrade_audit"]


@dataclasses.dataclass(frozen=True)
class Culprit:
    """Where a training first diverges: the step, the stage of the step and the tensor (a layer path, a variable)."""

    step: int
    stage: Stage
    name: str
    kind: str  # the layer's class, where the tensor is a layer's output
    between: str  # "repeats" or "processes"
    advice: str

    def sentence(self) -> str:
        what = {Stage.DATA: "the input batch", Stage.FORWARD: "the forward output of",
                Stage.LOSS: "the loss", Stage.GRADIENTS: "the gradient of", Stage.UPDATE: "the optimizer update of"}
        target = "" if self.stage in (Stage.DATA, Stage.LOSS) and not self.name.startswith("batch") else self.name
        kind = f" ({self.kind})" if self.kind else ""
        text = f"{what[self.stage]} {target}{kind}" if self.stage not in (Stage.DATA, Stage.LOSS) else \
            f"{what[self.stage]} ({self.name})"
        return f"step {self.step}, {self.stage.value}: {text.strip()} differs between {self.between}"


def describe_divergence(found: dict[str, Any] | None) -> str:
    """One phrase for where two traces part: "step 1, data: batch[0]"."""
    if not found:
        return ""
    return f"step {found['step']}, {found['stage']}: {found['name']}"


def _advice(stage: Stage, kind: str, pipeline: list[dict[str, str]], random_ops: list[str]) -> str:
    sources = [s for s in pipeline if s.get("source") == "yes"]
    if stage is Stage.DATA:
        if sources:
            return "; ".join(f"{s['problem']}: {s['fix']}" for s in sources)
        return "the input pipeline hands out other batches: check its shuffles, parallel stages and random ops"
    if stage is Stage.GRADIENTS:
        return "a backward kernel sums in a varying order: call tf.config.experimental.enable_op_determinism() " \
               "before building the model (or run detaudit audit ... --determinism on to check it helps)"
    if stage is Stage.FORWARD and kind:
        return f"{kind} computes differently on identical inputs: try --determinism on; if it still differs, the " \
               "layer draws random numbers outside a keras.random.SeedGenerator"
    if random_ops:
        return f"the step draws from stateful random ops ({', '.join(random_ops)})"
    return "try --determinism on"


def upgrade_audit(result: dict[str, Any]) -> dict[str, Any]:
    """An audit stored by detaudit before the training audit (layer rows, a ``restart`` dict) in today's form."""
    if "answers" in result:
        return result
    verdict = {"NOT RESTART-REPRODUCIBLE": AuditVerdict.NOT_RERUN_REPRODUCIBLE.value}.get(result.get("verdict"),
                                                                                       result.get("verdict"))
    restart = result.get("restart") or {}
    rows = [{"stage": Stage.FORWARD.value if row.get("forward") != "ok" or row.get("backward") == "ok"
             else Stage.GRADIENTS.value, "name": row.get("layer", "?"), "class": row.get("class", ""),
             "first_step": row.get("first_step"), "max_ulp": row.get("max_ulp", 0)} for row in result.get("layers", [])]
    culprit = result.get("culprit")
    divergence = None
    if culprit:
        row = next((r for r in rows if r["name"] == culprit.get("layer")), {})
        stage = Stage.GRADIENTS.value if "gradient" in str(culprit.get("tensor")) else Stage.FORWARD.value
        divergence = {"step": row.get("first_step") or 1, "stage": stage, "name": culprit.get("layer", "?"),
                      "execution": 2}
    legacy = "stored by an earlier detaudit, which did not ask"
    answers = [Answer(Question.RERUN, all(restart.values()) if restart else None,
                      "restart check: " + ", ".join(f"{k.replace('_', ' ')} {'same' if v else 'DIFFERS'}"
                                                    for k, v in restart.items()) if restart else legacy),
               Answer(Question.REPEATS, verdict != AuditVerdict.NONDETERMINISTIC.value,
                      "executions from the same weights compared at every step"),
               Answer(Question.RESUME, None, legacy)]
    return {**result, "verdict": verdict, "answers": [a.to_dict() for a in answers], "layers": rows,
            "repeat_divergence": divergence}


def answers_of(result: dict[str, Any]) -> list[Answer]:
    """The three answers of a stored audit."""
    return [Answer.from_dict(a) for a in result.get("answers", [])]


@dataclasses.dataclass
class AuditView:
    """Everything a renderer shows of one audit."""

    model: str
    verdict: AuditVerdict
    answers: list[Answer]
    culprit: Culprit | None
    training: list[str]  # lines describing the training that ran
    differing: list[dict[str, Any]]  # rows (stage, name, class, first_step, max_ulp) that differ between repeats
    consequences: int  # rows left out of ``differing``: downstream of a data divergence, they differ because it does
    all_rows: list[dict[str, Any]]
    losses: list[dict[str, Any]]
    random_layers: list[dict[str, Any]]
    pipeline: list[dict[str, str]]
    checks: list[dict[str, str]]
    folded_checks: list[str]
    gpus: int
    applied: dict[str, Any]

    @property
    def identical(self) -> int:
        """How many recorded tensors were identical in every execution."""
        return sum(1 for row in self.all_rows if not row.get("first_step"))

    @property
    def random_line(self) -> str:
        """The random layers, and which draw unseeded; "" when there are none."""
        if not self.random_layers:
            return ""
        unseeded = [r["path"] for r in self.random_layers if not r["seeded"]]
        line = "Random layers: " + ", ".join(f"{r['path']} ({r['class']})" for r in self.random_layers)
        if unseeded:
            line += (f"; unseeded: {', '.join(unseeded)}, so their draws follow keras.utils.set_random_seed, which "
                     "detaudit calls before building the training, as your script must")
        return line

    @property
    def pipeline_notes(self) -> list[tuple[str, bool]]:
        """One sentence per candidate source of the input pipeline, and whether it is a source of the difference."""
        notes = []
        for source in self.pipeline:
            is_source = source.get("source") == "yes"
            fix = f" Fix: {source.get('fix')}" if is_source else ""
            notes.append((f"Data pipeline: {source.get('node')}: {source.get('problem')} "
                          f"({'source' if is_source else source.get('source')}).{fix}", is_source))
        return notes

    @property
    def folded_note(self) -> str:
        """Which checks are left out because they do not apply to the devices present; "" when none are."""
        if not self.folded_checks:
            return ""
        where = "no GPU visible" if not self.gpus else "a GPU is visible"
        return f"Not shown ({where}, they do not apply): {', '.join(self.folded_checks)}"

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> AuditView:
        result = upgrade_audit(result)
        training = result.get("training") or {}
        gpus = int(result.get("gpus_visible") or 0)
        checks = result.get("checks") or []
        relevant = [c for c in checks if _applies(c, gpus)]
        rows = result.get("layers") or []
        culprit = _culprit(result)
        differing = [r for r in rows if r.get("first_step")]
        consequences = 0
        if culprit is not None and culprit.stage is Stage.DATA:
            consequences, differing = len(differing), []
        return cls(
            model=str(result.get("model", "?")), verdict=AuditVerdict(result["verdict"]), answers=answers_of(result),
            culprit=culprit, training=_training_lines(training, result),
            differing=differing, consequences=consequences, all_rows=rows,
            losses=(training.get("losses") or result.get("losses") or []),
            random_layers=training.get("random_layers") or [], pipeline=result.get("pipeline") or [],
            checks=relevant, folded_checks=[c["check"] for c in checks if not _applies(c, gpus)], gpus=gpus,
            applied=result.get("applied") or {})


def _applies(check: dict[str, Any], gpus: int) -> bool:
    return check.get("applies", "any") == "any" or (check["applies"] == "gpu") == (gpus > 0)


def _culprit(result: dict[str, Any]) -> Culprit | None:
    found, between = result.get("repeat_divergence"), "repeats"
    if not found:
        found, between = result.get("rerun_divergence"), "processes"
    if not found:
        return None
    stage = Stage(found["stage"])
    classes = {r["name"]: r.get("class", "") for r in result.get("layers") or []}
    kind = classes.get(found["name"], "")
    random_ops = (result.get("resume") or {}).get("random_ops") or []
    return Culprit(found["step"], stage, found["name"], kind, between,
                   _advice(stage, kind, result.get("pipeline") or [], random_ops))


def _training_lines(training: dict[str, Any], result: dict[str, Any]) -> list[str]:
    lines = []
    if training:
        step = "its own train_step" if training.get("train_step") == "custom" else "Keras' train_step"
        opts = ", ".join(training.get("optimizers") or []) or "no optimizer"
        loss = f", loss {training['loss']}" if training.get("loss") else ""
        lines.append(f"{training.get('model', 'model')}: {step}, {opts}{loss}, {training.get('steps')} steps, "
                     f"dtype policy {', '.join(training.get('dtype_policies') or ['?'])}")
        if training.get("synthetic"):
            lines.append(training["synthetic"])
    return lines
