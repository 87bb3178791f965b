"""The `kubetune` command (Typer + Rich) on kubetune.Client; see docs/cli.md.

Exit codes: 0 ok / succeeded, 1 the job failed, 2 bad input (names the field),
3 timed out, 4 not found, 5 artifacts failed verification (or are missing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from kubetune.client import ArtifactsError, Client, JobFailed, load_job

app = typer.Typer(
    help="Submit and follow kubetune FineTuneJobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TIMEOUT, EXIT_NOT_FOUND, EXIT_VERIFY = 1, 2, 3, 4, 5

NsOpt = typer.Option(None, "--namespace", "-n", help="Namespace (default: kubeconfig's).")
CtxOpt = typer.Option(None, "--context", help="kubeconfig context.")
TimeoutOpt = typer.Option(3600, help="Seconds to wait at most.")


def _client(namespace: str | None, context: str | None) -> Client:
    try:
        return Client(namespace, context=context)
    except ConfigException as e:
        err.print(
            f"[red]error[/red]: no cluster to talk to ({e}); set KUBECONFIG or pass --context"
        )
        raise typer.Exit(EXIT_BAD_INPUT) from e


def _bad_input(e: ValidationError) -> None:
    for error in e.errors():
        loc = ".".join(str(p) for p in error["loc"])
        err.print(f"[red]error[/red]: {loc}: {error['msg']}")
    raise typer.Exit(EXIT_BAD_INPUT)


@contextmanager
def _bad_input_exits(file: Path | None) -> Iterator[None]:
    """Exit 2 on bad input: a field the models refuse (named), or a file that cannot be read."""
    try:
        yield
    except ValidationError as e:
        _bad_input(e)
    except (OSError, yaml.YAMLError) as e:
        err.print(f"[red]error[/red]: {file}: {e}")
        raise typer.Exit(EXIT_BAD_INPUT) from e


def _api_error(e: ApiException) -> None:
    try:
        message = json.loads(e.body or "{}").get("message") or e.reason
    except ValueError:
        message = e.body or e.reason
    err.print(f"[red]error[/red]: {e.status} {message}")
    raise typer.Exit(EXIT_NOT_FOUND if e.status == 404 else EXIT_BAD_INPUT)


def _source(uri: str, what: str) -> dict[str, Any]:
    """--model/--data value to a source: s3://..., pvc://claim/path, or a Hub id."""
    if uri.startswith("s3://"):
        return {"s3Uri": uri}
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        return {"pvc": {"claimName": claim, "path": "/" + path}}
    if what == "model":
        return {"hubId": uri}
    return {"hub": {"name": uri}}


def spec_from_flags(
    *,
    name: str,
    model: str,
    data: str,
    output: str,
    method: str = "lora",
    data_format: str | None = None,
    epochs: float | None = None,
    max_steps: int | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    gpus: int | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """The FineTuneJob the common-case flags describe (validated by load_job afterwards)."""
    hp: dict[str, Any] = {
        k: v
        for k, v in (
            ("epochs", epochs),
            ("maxSteps", max_steps),
            ("learningRate", learning_rate),
            ("batchSize", batch_size),
        )
        if v is not None
    }
    dataset = _source(data, "data")
    if data_format:
        dataset["format"] = data_format
    spec: dict[str, Any] = {
        "model": _source(model, "model"),
        "dataset": dataset,
        "method": {"type": method},
        "output": {"uri": output},
    }
    if hp:
        spec["hyperparameters"] = hp
    if gpus is not None:
        spec["resources"] = {"gpus": gpus}
    if dry_run:
        spec["dryRun"] = True
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": spec,
    }


@app.command()
def submit(
    file: Path | None = typer.Option(None, "--file", "-f", help="FineTuneJob YAML."),
    name: str | None = typer.Option(None, help="metadata.name (with --model/--data)."),
    model: str | None = typer.Option(
        None, help="Base model: Hub id, s3://bucket/prefix/ or pvc://claim/path."
    ),
    data: str | None = typer.Option(
        None, help="Dataset: s3://bucket/key, Hub dataset id or pvc://claim/path."
    ),
    method: str = typer.Option("lora", help="spec.method.type (lora, qlora, full, ...)."),
    output: str | None = typer.Option(None, help="spec.output.uri (s3://bucket/prefix)."),
    data_format: str | None = typer.Option(
        None, "--format", help="spec.dataset.format (text, prompt-completion, messages)."
    ),
    epochs: float | None = typer.Option(None, help="spec.hyperparameters.epochs."),
    max_steps: int | None = typer.Option(None, help="spec.hyperparameters.maxSteps."),
    learning_rate: float | None = typer.Option(None, help="spec.hyperparameters.learningRate."),
    batch_size: int | None = typer.Option(None, help="spec.hyperparameters.batchSize."),
    gpus: int | None = typer.Option(None, help="spec.resources.gpus."),
    namespace: str | None = NsOpt,
    context: str | None = CtxOpt,
) -> None:
    """Create a FineTuneJob from -f job.yaml or from flags (--name --model --data --output)."""
    try:
        with _bad_input_exits(file):
            if file is not None:
                job = load_job(file)
            else:
                missing = [
                    f
                    for f, v in (
                        ("--name", name),
                        ("--model", model),
                        ("--data", data),
                        ("--output", output),
                    )
                    if not v
                ]
                if missing:
                    err.print(f"[red]error[/red]: give -f job.yaml or {', '.join(missing)}")
                    raise typer.Exit(EXIT_BAD_INPUT)
                assert name and model and data and output
                job = load_job(
                    spec_from_flags(
                        name=name,
                        model=model,
                        data=data,
                        output=output,
                        method=method,
                        data_format=data_format,
                        epochs=epochs,
                        max_steps=max_steps,
                        learning_rate=learning_rate,
                        batch_size=batch_size,
                        gpus=gpus,
                    )
                )
            created = _client(namespace, context).create(job)
    except ApiException as e:
        _api_error(e)
        return
    console.print(f"finetunejob.kubetune.io/{created.metadata['name']} created")


@app.command("list")
def list_(namespace: str | None = NsOpt, context: str | None = CtxOpt) -> None:
    """List FineTuneJobs with the printer columns."""
    table = Table("NAME", "PHASE", "MODEL", "PROGRESS", "MESSAGE", box=None)
    for job in _client(namespace, context).list():
        st = job.status
        table.add_row(
            job.metadata.get("name", ""),
            (st.phase if st else None) or "",
            (st.model if st else None) or "",
            (st.progress_summary if st else None) or "",
            ((st.message if st else None) or "")[:60],
        )
    console.print(table)


@app.command()
def get(name: str, namespace: str | None = NsOpt, context: str | None = CtxOpt) -> None:
    """Show one FineTuneJob's status as YAML."""
    try:
        job = _client(namespace, context).get(name)
    except ApiException as e:
        _api_error(e)
        return
    console.print(yaml.safe_dump(job.model_dump(by_alias=True, exclude_none=True, mode="json")))


def _fmt_eta(seconds: int | None) -> str:
    if seconds is None:
        return "eta -"
    h, rem = divmod(int(seconds), 3600)
    m, sec = divmod(rem, 60)
    return f"eta {h}:{m:02d}:{sec:02d}" if h else f"eta {m}:{sec:02d}"


def progress_fields(job: Any) -> dict[str, Any]:
    """What the watch bar shows, from status alone (pure; the unit tests read it)."""
    st = job.status
    p = st.progress if st else None
    phase = (st.phase if st else None) or "Pending"
    out: dict[str, Any] = {"phase": phase, "completed": 0, "total": None, "info": ""}
    if p is None:
        return out
    parts = []
    if p.stage:
        parts.append(p.stage)
    parts.append(f"loss {p.loss:.4f}" if p.loss is not None else "loss -")
    parts.append(f"{p.tokens_per_second:,.0f} tok/s" if p.tokens_per_second else "- tok/s")
    parts.append(_fmt_eta(p.eta_seconds if phase != "Succeeded" else 0))
    out.update(completed=p.step or 0, total=p.total_steps or None, info="  ".join(parts))
    return out


@app.command()
def watch(
    name: str,
    namespace: str | None = NsOpt,
    context: str | None = CtxOpt,
    timeout: float = TimeoutOpt,
) -> None:
    """A live progress bar: step/total, loss, tokens/s and ETA from status.progress.
    Exit 0 when Succeeded, 1 when Failed, 3 when the timeout passes first."""
    client = _client(namespace, context)
    phase = None
    deadline = time.monotonic() + timeout
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            TextColumn("{task.fields[phase]}"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TaskProgressColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task(name, total=None, phase="", info="")
            # the watch stream may end (server timeout) before the job does: watch again
            while phase not in ("Succeeded", "Failed") and time.monotonic() < deadline:
                left = max(1, int(deadline - time.monotonic()))
                for job in client.watch(name, timeout_seconds=left):
                    f = progress_fields(job)
                    phase = f["phase"]
                    bar.update(task, completed=f["completed"], total=f["total"],
                               phase=phase, info=f["info"])  # fmt: skip
    except ApiException as e:
        _api_error(e)
        return
    console.print(f"{name}: {phase}")
    if phase == "Failed":
        raise typer.Exit(EXIT_FAILED)
    if phase != "Succeeded":
        raise typer.Exit(EXIT_TIMEOUT)


@app.command()
def wait(
    name: str,
    namespace: str | None = NsOpt,
    context: str | None = CtxOpt,
    timeout: float = TimeoutOpt,
    condition: str = typer.Option(
        "Succeeded", "--for", help="kstatus condition to wait for (Succeeded, Ready, Suspended)."
    ),
) -> None:
    """Block until the condition is True (exit 0), the job fails (1) or time is up (3)."""
    try:
        _client(namespace, context).wait(name, timeout=timeout, condition=condition)
    except ApiException as e:
        _api_error(e)
    except JobFailed as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(EXIT_FAILED) from e
    except TimeoutError as e:
        err.print(str(e))
        raise typer.Exit(EXIT_TIMEOUT) from e
    console.print(f"{name}: {condition}")


@app.command()
def logs(
    name: str,
    follow: bool = typer.Option(False, "--follow", "-f"),
    wait: float = typer.Option(0, help="Seconds to wait for the pod to start."),
    namespace: str | None = NsOpt,
    context: str | None = CtxOpt,
) -> None:
    """Logs of the current run's rank-0 pod (completion index 0 of a run of several pods)."""
    try:
        for line in _client(namespace, context).logs(name, follow=follow, wait=wait):
            print(line, flush=True)
    except ApiException as e:
        _api_error(e)


def _simple(action: str):
    def cmd(name: str, namespace: str | None = NsOpt, context: str | None = CtxOpt) -> None:
        try:
            getattr(_client(namespace, context), action)(name)
        except ApiException as e:
            _api_error(e)
        console.print(
            f"finetunejob.kubetune.io/{name} {action}{'l' if action == 'cancel' else ''}ed"
        )

    cmd.__doc__ = f"{action.capitalize()} a FineTuneJob."
    return cmd


for _action in ("cancel", "suspend", "resume"):
    app.command(_action)(_simple(_action))


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def print_estimate(e: Any, bad_rows_policy: str) -> None:
    """The estimate as a table (Rich), bad rows first."""
    st = e.to_status()
    for b in e.bad_rows[:20]:
        err.print(f"[red]bad row[/red] line {b.line}: {b.field}: {b.problem}")
    if len(e.bad_rows) > 20:
        err.print(f"... and {len(e.bad_rows) - 20} more bad rows")
    mem = st["gpuMemoryGiB"]
    t = Table("", "", box=None, show_header=False)
    rows = [
        ("model", f"{e.model}: {_count(e.params)} parameters, "
                  f"{_count(e.trainable_params)} trainable"),
        ("dataset", f"{e.dataset}: {e.rows_total}{'' if e.rows_total_exact else ' (estimated)'} "
                    f"rows, {e.rows_sampled} sampled, {len(e.bad_rows)} bad ({bad_rows_policy})"),
        ("tokens/row", f"mean {e.tokens_per_row_mean:.0f}, p95 {e.tokens_per_row_p95}, "
                       f"{e.truncated_rows} sampled rows longer than maxSeqLength"),
        ("tokens/epoch", f"{e.tokens_per_epoch:,}"),
        ("steps", f"{e.steps_per_epoch} per epoch, {e.total_steps} in all"),
        ("peak GPU memory", f"{mem['peak']:.2f} GiB per GPU (weights {mem['weights']:.2f}, "
                            f"optimizer {mem['optimizer']:.2f}, activations "
                            f"{mem['activations']:.2f}; largest micro-batch "
                            f"{e.micro_batch_tokens_peak:,} tokens"
                            f"{', padding-free' if e.padding_free else ', padded'})"),
        ("throughput", f"{e.tokens_per_second:,.0f} tokens/s on {e.gpus} GPU(s) (H100 table)"),
        ("wall time", f"{_fmt_eta(int(e.wall_seconds))[4:]} (h:mm:ss)"),
        ("GPU-hours", f"{e.gpu_hours:.2f}"),
    ]  # fmt: skip
    for k, v in rows:
        t.add_row(f"[bold]{k}[/bold]", v)
    console.print(t)
    for n in e.notes:
        console.print(f"note: {n}")


@app.command()
def estimate(
    file: Path = typer.Option(..., "--file", "-f", help="FineTuneJob YAML."),
    as_json: bool = typer.Option(False, "--json", help="Print status.estimate's JSON."),
    s3_endpoint: str | None = typer.Option(
        None, envvar="AWS_ENDPOINT_URL", help="S3 endpoint (MinIO); credentials from AWS_*."
    ),
) -> None:
    """Rows, tokens, steps, peak GPU memory, wall time and GPU-hours, without a GPU and without
    the weights. Exit 2 when the sample has bad rows (and badRows is fail) or input is bad."""
    import tempfile

    from kubetune_api.estimate import estimate_job

    with _bad_input_exits(file):
        job = load_job(file)
    try:
        with tempfile.TemporaryDirectory(prefix="kubetune-estimate-") as tmp:
            result = estimate_job(job.spec, Path(tmp), s3_endpoint=s3_endpoint)
    except (FileNotFoundError, ValueError) as e:
        err.print(f"[red]error[/red]: {e}")
        raise typer.Exit(EXIT_BAD_INPUT) from e
    policy = str(job.spec.dataset.bad_rows)
    if as_json:
        print(json.dumps(result.to_status(), indent=2))
    else:
        print_estimate(result, policy)
    if result.bad_rows and policy == "fail":
        raise typer.Exit(EXIT_BAD_INPUT)


artifacts_app = typer.Typer(help="The current run's artifacts.", no_args_is_help=True)
app.add_typer(artifacts_app, name="artifacts")


@artifacts_app.command("download")
def artifacts_download(
    name: str,
    dest: Path = typer.Option(Path("."), "--dest", "-o", help="Directory to write to."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Check every file's sha256 against manifest.json."
    ),
    only: str = typer.Option("", "--only", help="Only paths under this prefix (adapter/)."),
    s3_endpoint: str | None = typer.Option(
        None, envvar="AWS_ENDPOINT_URL", help="S3 endpoint (MinIO); credentials from AWS_*."
    ),
    namespace: str | None = NsOpt,
    context: str | None = CtxOpt,
) -> None:
    """Download the files manifest.json lists; exit 5 if one fails verification."""
    try:
        files = _client(namespace, context).download_artifacts(
            name, dest, verify=verify, prefix=only, s3_endpoint=s3_endpoint
        )
    except ArtifactsError as e:
        err.print(f"[red]error[/red]: {e}")
        raise typer.Exit(EXIT_VERIFY) from e
    except ApiException as e:
        _api_error(e)
        return
    total = sum(f.size for f in files)
    what = "verified against manifest.json (sha256)" if verify else "not verified"
    console.print(f"{len(files)} files, {total / 2**20:.1f} MiB in {dest}: {what}")


@artifacts_app.command("verify")
def artifacts_verify(
    dest: Path = typer.Argument(..., help="A directory artifacts download wrote."),
) -> None:
    """Check a downloaded copy against its manifest.json again; exit 5 on a mismatch."""
    from kubetune.client import verify_dir

    manifest = json.loads((dest / "manifest.json").read_text())
    problems = verify_dir(dest, manifest)
    for p in problems:
        err.print(f"[red]mismatch[/red]: {p}")
    if problems:
        raise typer.Exit(EXIT_VERIFY)
    console.print(f"{len(manifest.get('files', []))} files match manifest.json")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
