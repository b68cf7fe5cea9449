"""The ``noether-jax`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Learning dynamics as Lagrangian mechanics.")


@app.callback()
def _main(x64: bool = typer.Option(True, help="Run in float64 (the default); --no-x64 for float32.")) -> None:
    import matplotlib

    from ._config import enable_x64

    matplotlib.use("Agg")  # files only: the command line never opens a window (the library leaves the backend alone)
    enable_x64(x64)


@app.command()
def demo(
    lr: float = typer.Option(0.05, help="learning rate η (> 0)"),
    momentum: float = typer.Option(0.0, help="heavy-ball momentum β in [0, 1)"),
    weight_decay: float = typer.Option(0.0, help="coupled weight decay λ (≥ 0)"),
    time: float = typer.Option(20.0, help="horizon in continuous time t = n·η"),
    out: Path = typer.Option(Path("runs/demo"), help="output folder"),
) -> None:
    """A discrete optax run against its modified flow and its gradient flow (CPU, seconds)."""
    from ._demo import format_table, plot_demo, run_demo

    try:
        result = run_demo(lr=lr, momentum=momentum, weight_decay=weight_decay, time=time)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_table(result["table"]))
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_demo(result, out / "demo.png")
    (out / "summary.json").write_text(json.dumps({"config": result["config"], "table": result["table"]}, indent=2))
    typer.echo(f"\nwrote {fig} and {out / 'summary.json'}")


@app.command("neural-mechanics")
def neural_mechanics_cmd(
    model: str = typer.Option("mlp", help="mlp, mlp_tanh, mlp_layernorm, cnn_bn, vgg or vgg_bn"),
    lr: float = typer.Option(0.1, help="learning rate η (> 0)"),
    momentum: float = typer.Option(0.0, help="heavy-ball momentum β in [0, 1)"),
    weight_decay: float = typer.Option(1e-4, help="coupled weight decay λ (≥ 0)"),
    batch_size: int = typer.Option(128, help="mini-batch size S (1 … training-set size)"),
    steps: int = typer.Option(2000, help="number of SGD steps (> 0)"),
    seed: int = typer.Option(0, help="PRNG seed (initialisation and mini-batches)"),
    width: int = typer.Option(32, help="hidden width (MLP) or first-block channels (CNN)"),
    save_every: int = typer.Option(10, help="record every this many steps"),
    data: str = typer.Option("digits", help="digits or teacher_student"),
    out: Path = typer.Option(Path("runs/neural_mechanics"), help="output folder"),
) -> None:
    """Train a model, record every symmetric group, and score the theory of broken conservation laws."""
    from ._neural_mechanics import NMConfig, neural_mechanics
    from ._report import nm_outputs, write_json

    try:
        cfg = NMConfig(model=model, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                       steps=steps, seed=seed, width=width, save_every=save_every, data=data).validate()
        result = neural_mechanics(cfg)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    summary, _ = nm_outputs(result, out)
    write_json(summary, out / "summary.json")
    if summary["diverged"]:
        typer.echo(f"the run diverged at step {summary['diverged_step']}; see {out / 'summary.json'}", err=True)
        raise typer.Exit(1)
    for kind, e in summary["symmetries"].items():
        typer.echo(f"{kind:12s} {e['n_groups']:5d} groups   median rel. error {e['median_rel_error']:.2e}   max {e['max_rel_error']:.2e}")
    stab = summary.get("stability") or {}
    if stab:
        verdict = ("valid" if stab["valid"] else f"λ_max not finite at steps {stab['not_finite_steps']}" if stab.get("not_finite_steps")
                   else f"EDGE OF STABILITY at steps {stab['flagged_steps']}: no continuous model applies")
        sharp = stab["max_sharpness"]
        typer.echo(f"guard        max η·λ_max {float('nan') if sharp is None else sharp:.3g} vs 2(1+β) = {stab['threshold']:.3g}: {verdict}")
    typer.echo(f"test accuracy {summary['final_test_accuracy']:.3f}\nwrote {out}/summary.json, figures and series.nc")


@app.command()
def reproduce(
    out: Path = typer.Option(Path("runs/reproduce"), help="output folder for report.html and summary.json"),
    quick: bool = typer.Option(True, "--quick/--full", help="--quick: CPU, minutes (default); --full: paper scale, for a GPU"),
) -> None:
    """The main job: run the default suite and write one self-contained report.html and summary.json."""
    from ._report import reproduce as run

    summary = run(out, quick=quick)
    typer.echo(f"wrote {out / 'report.html'} and {out / 'summary.json'} in {summary['elapsed_s']:.0f} s")


from ._sweep import sweep_command  # noqa: E402

app.command("sweep")(sweep_command)

from ._nld import nld_command  # noqa: E402

app.command("nld")(nld_command)


def main() -> None:  # the console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
