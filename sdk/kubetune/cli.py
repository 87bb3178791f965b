"""The `kubetune` command (Typer + Rich) on kubetune.Client; see docs/cli.md.

Exit codes: 0 ok / succeeded, 1 the job failed, 2 bad input (names the field),
3 timed out, 4 not found.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kubetune.client import Client, JobFailed, load_job

app = typer.Typer(
    help="Submit and follow kubetune FineTuneJobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TIMEOUT, EXIT_NOT_FOUND = 1, 2, 3, 4

NsOpt = typer.Option(None, "--namespace", "-n", help="Namespace (default: kubeconfig's).")
CtxOpt = typer.Option(None, "--context", help="kubeconfig context.")


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


def _api_error(e: ApiException) -> None:
    try:
        message = json.loads(e.body or "{}").get("message") or e.reason
    except ValueError:
        message = e.body or e.reason
    err.print(f"[red]error[/red]: {e.status} {message}")
    raise typer.Exit(EXIT_NOT_FOUND if e.status == 404 else EXIT_BAD_INPUT)


@app.command()
def submit(
    file: Path | None = typer.Option(None, "--file", "-f", help="FineTuneJob YAML."),
    name: str | None = typer.Option(None, help="metadata.name (with --model/--data)."),
    model: str | None = typer.Option(None, help="spec.model.name (hub id)."),
    data: str | None = typer.Option(None, help="spec.data.uri (s3:// or hub dataset)."),
    method: str = typer.Option("lora", help="spec.method.type."),
    output: str | None = typer.Option(None, help="spec.output.uri (s3://bucket/prefix)."),
    namespace: str | None = NsOpt,
    context: str | None = CtxOpt,
) -> None:
    """Create a FineTuneJob from -f job.yaml or from flags."""
    try:
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
            job = load_job(
                {
                    "metadata": {"name": name},
                    "spec": {
                        "model": {"name": model},
                        "data": {"uri": data},
                        "method": {"type": method},
                        "output": {"uri": output},
                    },
                }
            )
        created = _client(namespace, context).create(job)
    except ValidationError as e:
        _bad_input(e)
        return
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
    import yaml

    console.print(yaml.safe_dump(job.model_dump(by_alias=True, exclude_none=True, mode="json")))


@app.command()
def watch(
    name: str,
    namespace: str | None = NsOpt,
    context: str | None = CtxOpt,
    timeout: int = typer.Option(3600, help="Seconds."),
) -> None:
    """A live progress bar: step, loss, tokens/s and ETA from status.progress."""
    client = _client(namespace, context)
    phase = None
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(name, total=None, info="")
        for job in client.watch(name, timeout_seconds=timeout):
            st = job.status
            phase = st.phase if st else None
            p = st.progress if st else None
            info = f"phase={phase}"
            if p is not None:
                info += f" loss={p.loss:.4f}" if p.loss is not None else ""
                info += f" tok/s={p.tokens_per_second:.0f}" if p.tokens_per_second else ""
                info += f" eta={p.eta_seconds}s" if p.eta_seconds is not None else ""
                bar.update(task, completed=p.step or 0, total=p.total_steps, info=info)
            else:
                bar.update(task, info=info)
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
    timeout: float = typer.Option(3600, help="Seconds."),
) -> None:
    """Block until the job succeeds (exit 0), fails (1) or the timeout passes (3)."""
    try:
        _client(namespace, context).wait(name, timeout=timeout)
    except JobFailed as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(EXIT_FAILED) from e
    except TimeoutError as e:
        err.print(str(e))
        raise typer.Exit(EXIT_TIMEOUT) from e
    console.print(f"{name}: Succeeded")


@app.command()
def logs(
    name: str,
    follow: bool = typer.Option(False, "--follow", "-f"),
    namespace: str | None = NsOpt,
    context: str | None = CtxOpt,
) -> None:
    """Logs of the current run's rank-0 pod."""
    for line in _client(namespace, context).logs(name, follow=follow):
        print(line)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
