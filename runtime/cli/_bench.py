"""``hoard bench``: run `hoard._bench` and print its table (or JSON, or a chart)."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import attrs
import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._bench import MEASURES, SERIES_MEASURES, BenchReport, BenchRow, run_bench, run_soak, write_chart
from ._common import emit_json, out, remember_json

__all__ = ["bench"]


def _amount(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix} {unit}"
    return f"{value:.3g} {unit}"


def _print_table(report: BenchReport) -> None:
    console = out()
    table = Table(box=None, header_style="bold")
    table.add_column("MEASURE", overflow="fold", max_width=44)
    table.add_column("HOARD", justify="right", no_wrap=True)
    table.add_column("FLOOR", justify="right", no_wrap=True)
    table.add_column("COMPARED WITH", overflow="fold", max_width=44)
    table.add_column("RATIO", justify="right")
    table.add_column("TARGET", justify="right", no_wrap=True)
    table.add_column("MET")
    for row in report.rows:
        met = "skipped" if row.meets is None else ("[green]yes[/green]" if row.meets else "[red]no[/red]")
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        table.add_row(row.measure, _amount(row.value, row.unit), _amount(row.floor, row.unit), row.floor_name,
                      ratio, f"{'>=' if row.better == 'higher' else '<='} {row.target:g}", met)
    console.print(table)
    env = report.environment
    load = env.get("load_average")
    console.print(f"\n{'quick run' if report.quick else 'full run'} in {report.seconds:.0f} s on {env['cpus']} CPUs, "
                  f"{env['implementation']} {env['python']}, SQLite {env['sqlite']}, {env['platform']}"
                  + (f", load {load[0]:.2f}" if load else ""), markup=False)
    console.print(f"Each value ran in alternating rounds with its floor in this process ({report.rounds} for most "
                  "rows, the value their median); compare ratios only, never numbers across runs. Time and memory "
                  "rows: lower is better.", markup=False)
    for row in report.rows:
        if row.note:
            console.print(f"- {row.name}: {row.note}", markup=False)
    for series in report.series:  # the scaling series as numbers too (--chart draws them)
        first = series.y[0] if series.y and series.y[0] else None
        points = ", ".join(f"{x:g}: {_amount(y, series.unit)}" + (f" ({y / first:.2f}x)" if first else "")
                           for x, y in zip(series.x, series.y, strict=True))
        console.print(f"- {series.title}, by {series.xlabel}: {points}", markup=False)


def _soak(minutes: float, workdir: str | None, as_json: bool) -> None:
    report = run_soak(minutes, workdir=workdir,
                      progress=None if as_json else lambda n, rss: click.echo(f"soak: {n} activations, "
                                                                              f"RSS {rss:.1f} MiB", err=True))
    if as_json:
        emit_json(attrs.asdict(report))
        return
    growth = "n/a (too few samples)" if report.growth_per_100k is None else f"{report.growth_per_100k:.2f} MiB"
    click.echo(f"soak of {report.minutes:g} min: {report.activations} activations ({report.distinct} distinct "
               f"contexts), {report.hot_writes} hot writes; RSS {report.rss_start_mib:.1f} -> "
               f"{report.rss_end_mib:.1f} MiB; growth per 100,000 activations after warm-up: {growth} "
               f"(target < 2 MiB; fitted with the active contexts"
               f"{'' if report.rss_per_active_kib is None else f', {report.rss_per_active_kib:.0f} KiB each'}); "
               f"load average {report.load_average:.1f}")


def _rows_json(rows: tuple[BenchRow, ...]) -> list[dict[str, Any]]:
    return [r.to_json() for r in rows]


@click.command("bench")
@click.option("--quick", is_flag=True, help="Fewer operations and rounds: under a minute (noisier ratios).")
@click.option("--only", multiple=True, type=click.Choice(MEASURES), help="Run only this measure (repeatable).")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Alternating rounds of most rows with their floor (the value is their median; the RSS "
                   "and relay rows keep their own counts). Default 5 with --quick, else 15.")
@click.option("--chart", "chart", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also draw the scaling series into this PNG "
                   "(needs matplotlib: pip install 'hoard-contexts[chart]').")
@click.option("--dir", "workdir", type=click.Path(file_okay=False, exists=True, path_type=str), default=None,
              help="Where the temporary stores go (the disk the durable rows measure). Default: the temp dir.")
@click.option("--soak", "soak", type=click.FloatRange(min=0.1), default=None, metavar="MINUTES",
              help="Instead of the table: run a daemon-like soak for MINUTES (20,000 contexts touched once "
                   "each, a hot set written steadily, idle passivation) and report RSS growth per 100,000 "
                   "activations after the warm-up (target: under 2 MiB).")
@click.option("--json", "as_json", is_flag=True, is_eager=True, callback=remember_json,
              help="Print a JSON list, one object per row (name, value, floor, ratio, target, meets, ...).")
def bench(quick: bool, only: tuple[str, ...], rounds: int | None, chart: str | None, workdir: str | None,  # noqa: PLR0917
          soak: float | None, as_json: bool) -> None:
    """Measure hoard against its floors, each in the same process and run, and print the ratios.

    Every row compares a hoard operation with the cheapest way to do the same thing without hoard
    (a bare pykka actor, a plain dict, a raw SQLite commit...). The full run takes a few minutes;
    --quick under one.

    \b
    Examples:
      hoard bench --quick
      hoard bench --json > bench.json
      hoard bench --only durable_set --only peers --rounds 31
      hoard bench --chart scaling.png
      hoard bench --soak 10
    """
    if soak is not None:
        _soak(soak, workdir, as_json)
        return
    charted = {*SERIES_MEASURES, "peers", "peers_concurrent"}
    if chart is not None and only and not set(only) & charted:
        raise click.UsageError(f"--chart draws the scaling series of {', '.join(SERIES_MEASURES)} and the peer "
                               "rows; --only selects none of them")
    if chart is not None and importlib.util.find_spec("matplotlib") is None:
        raise click.ClickException("--chart needs matplotlib: pip install 'hoard-contexts[chart]'")
    if sys.stderr.isatty():
        with Progress(TextColumn("bench: {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("starting", total=len(only or MEASURES))
            report = run_bench(quick=quick, only=only or None, workdir=workdir, rounds=rounds,
                               progress=lambda done, _total, name: bar.update(task, completed=done, description=name))
    else:
        report = run_bench(quick=quick, only=only or None, workdir=workdir, rounds=rounds)
    if as_json:
        emit_json(_rows_json(report.rows))
    else:
        _print_table(report)
    if chart is not None:
        write_chart(report, chart)
        click.echo(f"chart written to {chart}", err=True)
