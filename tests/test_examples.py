"""examples/: the CI and scheduler files parse and call detaudit as documented; the model examples audit clean."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import detaudit

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _steps_text(steps: list[dict]) -> str:
    return "\n".join(str(step.get("run", "")) for step in steps)


def test_the_nightly_workflow_is_scheduled_and_runs_compares_reports_and_uploads():
    workflow = yaml.safe_load((EXAMPLES / "nightly-github-actions.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on:` key as True
    assert triggers["schedule"][0]["cron"].split() and "workflow_dispatch" in triggers
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    uses = [step.get("uses", "") for step in steps]
    text = _steps_text(steps)

    setup = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache"] == "pip"
    assert 'pip install ".[cpu,report]"' in text and "detaudit env" in text
    download = next(step for step in steps if "download-artifact" in step.get("uses", ""))
    assert download["with"]["name"] == "detaudit-runs" and download.get("continue-on-error") is True
    assert "detaudit run configs/nightly.yaml --out runs --compare-to latest --junit junit.xml" in text
    assert "detaudit report latest --runs runs --html report.html --compare-to previous" in text
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact")]
    uploaded = "\n".join(step["with"]["path"] for step in uploads)
    assert all(step.get("if") == "always()" for step in uploads)
    assert "runs/" in uploaded and "report.html" in uploaded and "junit.xml" in uploaded
    assert any(step["with"]["name"] == "detaudit-runs" for step in uploads)  # what tomorrow downloads
    assert any(u.startswith("mikepenz/action-junit-report") for u in uses)
    # the order that makes --compare-to latest meaningful: download, run, report, upload
    order = [uses.index(next(u for u in uses if "download-artifact" in u)),
             next(i for i, s in enumerate(steps) if "detaudit run " in str(s.get("run", ""))),
             next(i for i, s in enumerate(steps) if "detaudit report " in str(s.get("run", ""))),
             uses.index(next(u for u in uses if u.startswith("actions/upload-artifact")))]
    assert order == sorted(order)


def test_every_workflow_step_has_a_one_line_comment():
    lines = (EXAMPLES / "nightly-github-actions.yml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- ") and line.startswith("      - "):  # a step of the job
            assert lines[i - 1].strip().startswith("#"), f"step without a comment: {line.strip()}"


def test_the_indexed_job_shards_by_completion_index_and_a_second_job_merges():
    docs = [doc for doc in yaml.safe_load_all((EXAMPLES / "k8s-indexed-job.yaml").read_text()) if doc]
    jobs = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Job"}
    claims = [doc["metadata"]["name"] for doc in docs if doc["kind"] == "PersistentVolumeClaim"]
    shards, merge = jobs["detaudit-shards"], jobs["detaudit-merge"]

    assert shards["spec"]["completionMode"] == "Indexed"
    assert shards["spec"]["completions"] == 4 and shards["spec"]["parallelism"] == 4
    (container,) = shards["spec"]["template"]["spec"]["containers"]
    command = " ".join(container["command"] + container["args"])
    assert "detaudit run configs/nightly.yaml" in command and "--shard $((JOB_COMPLETION_INDEX+1))/4" in command
    assert "--out /shards" in command and "--run-id shard-$JOB_COMPLETION_INDEX" in command

    (merger,) = merge["spec"]["template"]["spec"]["containers"]
    assert "detaudit merge /shards/* --out /runs" in " ".join(merger["command"] + merger["args"])
    for job in (shards, merge):  # both on the same shared claim
        volumes = job["spec"]["template"]["spec"]["volumes"]
        assert [v["persistentVolumeClaim"]["claimName"] for v in volumes] == claims


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_slurm_script_is_valid_bash_and_runs_one_shard_per_array_task():
    path = EXAMPLES / "slurm-shards.sh"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert "#SBATCH --array=1-4" in text
    assert '--shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"' in text
    assert '--run-id "shard-${SLURM_ARRAY_TASK_ID}"' in text and "--out shards" in text
    assert 'sbatch --dependency=afterok:$JOBID' in text and 'detaudit merge shards/* --out runs' in text


def test_the_examples_readme_names_every_example():
    readme = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLES.iterdir():
        if path.name not in ("README.md", "__init__.py", "__pycache__"):
            assert path.name in readme, path.name


def _audit(factory: str, out: Path) -> dict:
    result = detaudit("audit", factory, "--steps", "2", "--repeats", "2", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.tf
def test_the_dcgan_generator_audits_reproducible(tmp_path):
    data = _audit("examples.dcgan_generator:build_generator", tmp_path)
    assert data["verdict"] == "REPRODUCIBLE" and all(answer["holds"] for answer in data["answers"])
    classes = [row["class"] for row in data["layers"] if row["stage"] == "forward"]
    assert classes.count("Conv2DTranspose") == 2 and classes[-1] == "Conv2D"


@pytest.mark.slow
@pytest.mark.tf
def test_the_unet_audits_reproducible(tmp_path):
    data = _audit("examples.unet_segmentation:build_unet", tmp_path)
    assert data["verdict"] == "REPRODUCIBLE" and all(answer["holds"] for answer in data["answers"])
    classes = {row["class"] for row in data["layers"] if row["stage"] == "forward"}
    assert {"SeparableConv2D", "BatchNormalization", "MaxPooling2D", "Conv2DTranspose", "UpSampling2D",
            "Add"} <= classes
