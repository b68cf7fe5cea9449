"""The ``noether-jax`` command line (application tier).

One convention for every command: exit 0 when the work is done; 2 for bad input (a one-line message
naming the option, before any work); 1 when a single run (``demo``, ``neural-mechanics``, ``nld``)
diverged (its outputs are still written). ``sweep`` and ``reproduce`` exit 0 once their outputs are
written: their members' flags and verdicts are in the outputs. No command shows a raw traceback.
"""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Learning dynamics as Lagrangian mechanics.")

Out = Annotated[Path, typer.Option(help="output folder (checked before any work)")]


def _opt(help_: str, *names: str):
    return typer.Option(*names, help=help_)


class BadInput(Exception):
    """Raised for input errors: printed as one line, exit code 2."""


def _fail(msg: str, code: int) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def guarded(fn: Callable) -> Callable:
    """Every command's one exit convention: BadInput → exit 2 with one line; any other failure → exit 1 with
    one line (``NOETHER_JAX_DEBUG=1`` shows the traceback); never a raw traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BadInput as e:
            _fail(str(e), 2)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence for a command-line user
            if os.environ.get("NOETHER_JAX_DEBUG"):
                traceback.print_exc()
            typer.echo(f"error: {type(e).__name__}: {e}", err=True)
            typer.echo("(set NOETHER_JAX_DEBUG=1 to see the traceback)", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _rescued(out: Path, write: Callable[[Path], object]):
    """Write a computed result with ``write(folder)``; when ``out`` fails after the work (disk full, folder
    removed), write it to a fresh temporary folder instead and say where: a result is never lost."""
    try:
        return write(out), out
    except OSError as e:
        import tempfile

        rescue = Path(tempfile.mkdtemp(prefix="noether-jax-rescue-"))
        typer.echo(f"warning: could not write to {out} ({e.strerror or e}); writing the outputs to {rescue} instead",
                   err=True)
        return write(rescue), rescue


def _out_dir(out: Path) -> Path:
    from ._io import check_out_dir

    try:
        return check_out_dir(out, "--out")
    except ValueError as e:
        raise BadInput(str(e)) from None


@app.callback()
def _main(
    x64: Annotated[bool, _opt("run in float64 (the default); --no-x64 for float32")] = True,
    cache: Annotated[bool, typer.Option(help="use JAX's persistent compilation cache in ~/.cache/noether_jax (or "
                                             "$JAX_COMPILATION_CACHE_DIR); --no-cache, or NOETHER_JAX_CACHE=0, turns it off",
                                        envvar="NOETHER_JAX_CACHE")] = True,
) -> None:
    import matplotlib

    from ._config import compilation_cache, enable_x64

    matplotlib.use("Agg")  # files only: the command line never opens a window (the library leaves the backend alone)
    enable_x64(x64)
    if cache:
        try:
            compilation_cache()
        except OSError as e:  # an unwritable cache folder must not stop the work
            typer.echo(f"note: compilation cache off ({e})", err=True)


@app.command()
@guarded
def demo(
    lr: Annotated[float, _opt("learning rate η (> 0)")] = 0.05,
    momentum: Annotated[float, _opt("heavy-ball momentum β in [0, 1)")] = 0.0,
    weight_decay: Annotated[float, _opt("coupled weight decay λ (≥ 0)")] = 0.0,
    time: Annotated[float, _opt("horizon in continuous time t = n·η")] = 20.0,
    out: Out = Path("runs/demo"),
) -> None:
    """A discrete optax run against its modified flow and its gradient flow (CPU, seconds)."""
    from . import plots
    from ._io import write_json
    from .experiments import format_table, run_demo
    from .rules import Hyper

    try:
        Hyper(lr, momentum, weight_decay)
    except ValueError as e:
        raise BadInput(str(e)) from None
    out = _out_dir(out)
    with _busy("compiling and running the demo"):
        result = run_demo(lr=lr, momentum=momentum, weight_decay=weight_decay, time=time)
    typer.echo(format_table(result.table))
    def write(d: Path) -> None:
        plots.write_figure(plots.plot_demo(result), d / "demo.png")
        write_json(result.to_dict(), d / "summary.json")

    _, out = _rescued(out, write)
    typer.echo(f"\nwrote {out / 'demo.png'} and {out / 'summary.json'}")
    _single_run_verdict(result.guard.summary(), out)


def _busy(desc: str):
    """A spinner with the elapsed time on a terminal (compilation and a compiled scan report nothing themselves)."""
    import sys

    from ._progress import spinner

    return spinner(desc, enabled=sys.stderr.isatty())


def _single_run_verdict(stab: dict, out: Path) -> None:
    """One line on the guard; exit 1, in the words every command uses, when the run diverged (its outputs are written)."""
    if stab.get("diverged"):
        _fail(diverged_message(stab.get("diverged_step"), out), 1)
    if stab.get("checked"):
        if stab.get("valid"):
            verdict = "valid: the continuous model applies"
        elif stab.get("not_finite"):
            verdict = f"λ_max not finite at steps {stab.get('not_finite_steps')}: the continuous model cannot be checked"
        else:
            verdict = f"EDGE OF STABILITY at steps {stab.get('flagged_steps')}: no continuous model applies"
        sharp = stab.get("max_sharpness")
        typer.echo(f"guard: max η·λ_max {float('nan') if sharp is None else sharp:.3g} vs {stab.get('threshold_label')} = "
                   f"{stab.get('threshold') or float('nan'):.3g}: {verdict}")


def diverged_message(step, out: Path) -> str:
    """The one sentence of every command for a diverged single run."""
    return f"the run diverged at step {step} (status 'diverged'); its outputs are written to {out}"


def members_note(status: dict[str, int]) -> str:
    """The one sentence of ``sweep`` and ``reproduce`` for members or runs that did not finish ok ('' when all did).

    Example:
        >>> members_note({"ok": 3, "diverged": 1, "nan": 0, "invalid": 0, "edge": 0})
        "note: 1 of 4 members did not finish ok: 1 diverged (status 'diverged'); the other members are unaffected"
    """
    n = sum(status.values())
    bad = {k: v for k, v in status.items() if k != "ok" and v}
    if not bad:
        return ""
    parts = ", ".join(f"{v} {k} (status '{k}')" for k, v in bad.items())
    return f"note: {sum(bad.values())} of {n} members did not finish ok: {parts}; the other members are unaffected"


@app.command("neural-mechanics")
@guarded
def neural_mechanics_cmd(
    model: Annotated[str, _opt("mlp, mlp_tanh, mlp_layernorm, cnn_bn, vgg, vgg_bn, resnet, transformer, or module.path:callable "
                               "(a function nnx.Rngs -> nnx.Module)")] = "mlp",
    lr: Annotated[float, _opt("learning rate η (> 0)")] = 0.1,
    momentum: Annotated[float, _opt("heavy-ball momentum β in [0, 1)")] = 0.0,
    weight_decay: Annotated[float, _opt("coupled weight decay λ (≥ 0)")] = 1e-4,
    batch_size: Annotated[int, _opt("mini-batch size S (1 … training-set size)")] = 128,
    steps: Annotated[int, _opt("number of SGD steps (> 0)")] = 2000,
    seed: Annotated[int, _opt("PRNG seed (initialisation and mini-batches)")] = 0,
    width: Annotated[int, _opt("hidden width (MLP), first-block channels (CNN), channels (resnet) or model dimension "
                               "(transformer)")] = 32,
    save_every: Annotated[int, _opt("record every this many steps")] = 10,
    data: Annotated[str, _opt("digits, teacher_student, or a file: .npz with x_train, y_train, x_test, y_test, "
                              "or a table, .csv or .npy, with the label last")] = "digits",
    out: Out = Path("runs/neural_mechanics"),
) -> None:
    """Train a model, record every symmetric group, and score the theory of broken conservation laws."""
    from ._io import write_json
    from .experiments import NMConfig, load_data, neural_mechanics
    from .report import nm_outputs

    try:
        cfg = NMConfig(model=model, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                       steps=steps, seed=seed, width=width, save_every=save_every, data=data).validate()
        load_data(cfg.data)  # a bad file or model spec is bad input (exit 2), refused before any work
        if ":" in model:
            from .experiments._user import load_factory

            load_factory(model)
    except (ValueError, TypeError) as e:
        raise BadInput(str(e)) from None
    out = _out_dir(out)
    with _busy(f"compiling and training {cfg.model} for {cfg.steps} steps (one compiled scan)"):
        result = neural_mechanics(cfg)
    t = result.summary.get("timing_s", {})
    if t:
        typer.echo(f"compile {t['compile']:.1f} s, run {t['run']:.1f} s", err=True)

    def write(d: Path) -> dict:
        summary = nm_outputs(result, d)[0]
        write_json(summary, d / "summary.json")
        return summary

    summary, out = _rescued(out, write)
    for kind, e in summary.get("symmetries", {}).items():
        if "median_rel_error" in e:
            typer.echo(f"{kind:12s} {e['n_groups']:5d} groups   median rel. error {e['median_rel_error']:.2e}   "
                       f"max {e['max_rel_error']:.2e}")
    if summary.get("final_test_accuracy") is not None:
        typer.echo(f"test accuracy {summary['final_test_accuracy']:.3f}")
    typer.echo(f"wrote {out}/summary.json, figures and series")
    _single_run_verdict(summary.get("stability") or {}, out)


@app.command()
@guarded
def reproduce(
    out: Annotated[Path, _opt("output folder for report.html and summary.json (checked before any work)")] = Path("runs/reproduce"),
    quick: Annotated[bool, _opt("--quick: CPU, minutes (default); --full: paper scale, for a GPU", "--quick/--full")] = True,
) -> None:
    """The main job: run the default suite and write one self-contained report.html and summary.json."""
    from .report import reproduce as run

    out = _out_dir(out)
    summary = run(out, quick=quick)
    v = summary.get("verdicts", [])
    typer.echo(f"verdicts: {sum(c['passed'] for c in v)} of {len(v)} claims hold"
               + "".join(f"\n  ✘ {c['claim']}" for c in v if not c["passed"]))
    runs = [r.get("status", "ok") for r in summary.get("neural_mechanics", [])]
    note = members_note({s: runs.count(s) for s in dict.fromkeys(["ok", *runs])}).replace("members", "runs")
    if note:
        typer.echo(note, err=True)
    typer.echo(f"wrote {out / 'report.html'} and {out / 'summary.json'} in {summary['elapsed_s']:.0f} s")


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"`--{name}` must be a comma-separated list of numbers, got {text!r}.") from None


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"`--{name}` must be a comma-separated list of integers, got {text!r}.") from None


@app.command()
@guarded
def sweep(
    lr: Annotated[str, _opt("learning rates η > 0, comma-separated, e.g. 0.01,0.03,0.1")] = "0.01,0.03,0.1",
    momentum: Annotated[str, _opt("momenta β in [0, 1), comma-separated")] = "0",
    weight_decay: Annotated[str, _opt("coupled weight decays λ ≥ 0, comma-separated")] = "0",
    batch_size: Annotated[str, _opt("mini-batch sizes, comma-separated (one compile per size)")] = "128",
    seeds: Annotated[int, _opt("number of seeds (0 .. n-1)")] = 2,
    init_scale: Annotated[str, _opt("initialisation scales (multiply all initial parameters), comma-separated")] = "1",
    steps: Annotated[int, _opt("training steps per member")] = 200,
    save_every: Annotated[int, _opt("save interval (divides --steps)")] = 10,
    model: Annotated[str, _opt("model name (mlp, mlp_tanh, mlp_layernorm, cnn_bn, vgg, vgg_bn, resnet, transformer) or "
                                "module.path:callable")] = "mlp",
    width: Annotated[int, _opt("hidden width (MLP), first channels (CNN), channels (resnet) or model dimension "
                               "(transformer)")] = 32,
    chunk_size: Annotated[int, _opt("members per compiled call (0: all at once)")] = 0,
    data: Annotated[str, _opt("digits, teacher_student, or a .npz/.csv/.npy file")] = "digits",
    out: Out = Path("runs/sweep"),
    progress: Annotated[bool, _opt("progress bar over compilation and chunks")] = True,
    noether: Annotated[bool, _opt("record kinetic symmetry breaking and the charge budget per member and kind")] = False,
    rmsprop: Annotated[bool, _opt("train each member's mapped group RMSProp in lockstep (needs scale groups)")] = False,
    eq17_forms: Annotated[bool, _opt("score every NLD eq. 17 forcing in both forms per member (needs scale groups)")] = False,
    sharpness_every: Annotated[int | None, _opt("estimate η·λ_max every this many steps (a multiple of --save-every "
                                                "dividing --steps) for the edge-of-stability flag; default --steps "
                                                "(the first and the last step); 0: off")] = None,
    flow: Annotated[str, _opt("integrate each member's continuous model: modified, gradient, or none (full batch only)")] = "none",
    optimizer: Annotated[str, _opt("optimisers, comma-separated: sgd, adam, adamw, rmsprop (for adam/adamw --momentum is b1, "
                                   "and --weight-decay is AdamW's decoupled decay)")] = "sgd",
) -> None:
    """Sweep a grid; resumable (run it again with the same options to finish a killed sweep)."""
    from . import plots
    from ._io import atomic_write, write_json
    from .experiments import load_data
    from .sweeps import sweep as run_sweep
    from .sweeps import sweep_summary

    grid = dict(lr=_floats(lr, "lr"), momentum=_floats(momentum, "momentum"), weight_decay=_floats(weight_decay, "weight-decay"),
                batch_size=_ints(batch_size, "batch-size"), init_scale=_floats(init_scale, "init-scale"))
    try:
        ds_data = load_data(data)
        model_arg = model
        if ":" in model:
            from .experiments._user import load_factory

            model_arg = load_factory(model)
    except ValueError as e:
        raise BadInput(str(e)) from None
    out = _out_dir(out)
    try:
        ds = run_sweep(model_arg, seed=seeds, steps=steps, save_every=save_every, width=width, data=ds_data,
                       chunk_size=chunk_size or None, store=out / "store", progress=progress, noether=noether,
                       rmsprop=rmsprop, eq17_forms=eq17_forms, flow=None if flow == "none" else flow,
                       sharpness_every=steps if sharpness_every is None else sharpness_every,
                       optimizer=None if optimizer == "sgd" else [o.strip() for o in optimizer.split(",")], **grid)
    except (ValueError, TypeError) as e:
        raise BadInput(str(e)) from None
    def write(d: Path) -> tuple[dict, list]:
        atomic_write(d / "sweep.nc", bytes(ds.to_netcdf(None, engine="scipy")))
        summ = sweep_summary(ds)
        figs = plots.sweep_figures(ds, d)
        summ["figures"] = [p.name for p in figs]
        write_json(summ, d / "summary.json")
        return summ, figs

    (summ, figs), out = _rescued(out, write)
    typer.echo(f"{summ['n_members']} members: {summ['status']}; compile {ds.attrs['compile_time_s']:.1f} s, "
               f"run {ds.attrs['run_time_s']:.1f} s ({ds.attrs['chunks_run']} chunks run, {ds.attrs['chunks_loaded']} loaded)")
    typer.echo(f"wrote {out / 'sweep.nc'}, {out / 'summary.json'} and {len(figs)} heat maps in {out}")
    note = members_note(summ["status"])
    if note:
        typer.echo(note, err=True)


@app.command()
@guarded
def nld(
    model: Annotated[str, _opt("cnn_bn, vgg_bn, mlp_layernorm or resnet (a model with scale-invariant groups)")] = "cnn_bn",
    lr: Annotated[float, _opt("learning rate η (> 0)")] = 0.1,
    momentum: Annotated[float, _opt("heavy-ball momentum β in [0, 1)")] = 0.0,
    weight_decay: Annotated[float, _opt("coupled weight decay λ (≥ 0)")] = 5e-4,
    steps: Annotated[int, _opt("SGD steps (> 0); default 500 quick, 2000 full")] = 0,
    batch_size: Annotated[int, _opt("mini-batch size")] = 64,
    seed: Annotated[int, _opt("PRNG seed")] = 0,
    width: Annotated[int, _opt("first-block channels; default 4 quick, 16 full")] = 0,
    quick: Annotated[bool, _opt("--quick: CPU sizes, about a minute (default); --full: paper-like lengths",
                                "--quick/--full")] = True,
    detect: Annotated[bool, _opt("find the groups with nj.symmetry.detect (else by architecture; cnn_bn/vgg_bn only)")] = True,
    out: Out = Path("runs/nld"),
) -> None:
    """Noether's Learning Dynamics on digits: eq. 17, SGD vs its mapped RMSProp, the paper's ablations
    and kinetic symmetry breaking; writes summary.json, PNG figures and nld_data.npz."""
    from .experiments import NLDConfig, run_nld
    from .report import nld_outputs
    from .rules import Hyper

    try:
        Hyper(lr, momentum, weight_decay)
        cfg = NLDConfig(model=model, lr=lr, momentum=momentum, weight_decay=weight_decay, steps=steps or None,
                        batch_size=batch_size, seed=seed, width=width or None, quick=quick, detect=detect)
        from .models import MODELS

        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose cnn_bn, vgg_bn, mlp_layernorm or resnet (option --model).")
    except (ValueError, TypeError) as e:
        raise BadInput(str(e)) from None
    out = _out_dir(out)
    try:
        with _busy(f"compiling and running NLD on {model} ({'quick' if quick else 'full'} sizes)"):
            result = run_nld(cfg)
    except ValueError as e:
        raise BadInput(str(e)) from None
    s, out = _rescued(out, lambda d: nld_outputs(result, d))
    e, r, a = s["eq17"], s["rmsprop_match"], s["ablation"]
    typer.echo(f"eq. 17: {e['n_groups']} groups, median rel. error {e['median_rel_error']:.2e}, max {e['max_rel_error']:.2e}"
               f" (velocity-forced: median {e['velocity_forced_median_rel_error']:.2e})")
    typer.echo(f"RMSProp map: max angle {r['max_angle_deg']:.2f}° (control {r['control_max_angle_deg']:.2f}°), "
               f"final loss gap {r['final_loss_rel_gap']:.2%}, lr_eff error {r['lr_eff_max_rel_error']:.2%}")
    typer.echo(f"ablation (β=0.9, λ>0): unconstrained {a['unconstrained_final_loss']:.4f} vs constrained "
               f"{a['constrained_final_loss']:.4f}")
    typer.echo(f"wrote {out}/summary.json, figures and nld_data.npz")
    _single_run_verdict(s.get("stability") or {}, out)


def main() -> None:
    """The console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
