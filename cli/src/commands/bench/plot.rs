//! `--plot FILE.svg`: a bar chart of every cell's figures as ratios to the
//! cell's baseline (tokio-ct, or tokio-rustls for TLS), with the 1.0x and
//! 1.3x lines; below it, idle bytes per connection with the 1 KiB goal.

use std::path::Path;

use plotters::prelude::*;

use super::plan::{bytes, Cell, Plan, ServerKind};
use super::report::ratio;
use super::Outcome;

const COLORS: [RGBColor; 12] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    RGBColor(23, 190, 207),
    RGBColor(44, 160, 44),
    RGBColor(127, 127, 127),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(31, 60, 100),
    RGBColor(0, 0, 0),
];

fn color(kind: ServerKind) -> RGBColor {
    let i = ServerKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

fn short(cell: Cell) -> String {
    match cell {
        Cell::Echo { connections, size } => format!("{connections}x{}", bytes(size)),
        Cell::Bulk => "bulk".into(),
        Cell::TlsEcho { connections, size } => format!("tls {connections}x{}", bytes(size)),
        Cell::TlsBulk => "tls bulk".into(),
    }
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

pub fn write(path: &Path, plan: &Plan, out: &Outcome) -> Result<(), String> {
    draw(path, plan, out).map_err(|e| e.to_string())
}

fn draw(path: &Path, plan: &Plan, out: &Outcome) -> DrawResult {
    let root = SVGBackend::new(path, (1400, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (legend_band, rest) = root.split_vertically(36);
    let (top, bottom) = rest.split_vertically(540);
    legend(&legend_band, plan)?;
    ratios(&top, plan, out)?;
    idle(&bottom, out)?;
    root.present()?;
    Ok(())
}

/// Per cell, the servers that have a ratio, in plan order.
fn bars(plan: &Plan, out: &Outcome, ci: usize) -> Vec<(ServerKind, f64)> {
    let cell = plan.cells[ci];
    plan.servers
        .iter()
        .filter(|&&k| cell.runs(k))
        .filter_map(|&k| ratio(out, ci, k, cell.baseline()).map(|r| (k, r)))
        .collect()
}

fn ratios<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    plan: &Plan,
    out: &Outcome,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let n = plan.cells.len().max(1);
    let all: Vec<Vec<(ServerKind, f64)>> = (0..plan.cells.len())
        .map(|ci| bars(plan, out, ci))
        .collect();
    let top = all.iter().flatten().map(|&(_, r)| r).fold(1.5f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "proactor bench: each figure / tokio-ct (TLS cells: / tokio-rustls); medians over rounds",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
    let labels: Vec<String> = plan.cells.iter().map(|&c| short(c)).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let f = x.fract();
            let i = x.floor() as usize;
            if (f - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ratio to baseline")
        .draw()?;
    for &kind in &plan.servers {
        let mut rects = Vec::new();
        for (ci, cell_bars) in all.iter().enumerate() {
            let Some(j) = cell_bars.iter().position(|&(k, _)| k == kind) else {
                continue;
            };
            let w = 0.8 / cell_bars.len() as f64;
            let x0 = ci as f64 + 0.1 + j as f64 * w;
            let r = cell_bars[j].1;
            rects.push(Rectangle::new(
                [(x0, 0.0), (x0 + w * 0.9, r)],
                color(kind).filled(),
            ));
        }
        if rects.is_empty() {
            continue;
        }
        chart.draw_series(rects)?;
    }
    for (goal, style) in [(1.0, BLACK.stroke_width(1)), (1.3, RED.stroke_width(1))] {
        chart.draw_series(LineSeries::new(vec![(0.0, goal), (n as f64, goal)], style))?;
    }
    Ok(())
}

/// One row of colour keys above the charts.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    plan: &Plan,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let mut x = 70;
    for &kind in &plan.servers {
        if !plan.cells.iter().any(|c| c.runs(kind)) {
            continue;
        }
        area.draw(&Rectangle::new(
            [(x, 14), (x + 12, 26)],
            color(kind).filled(),
        ))?;
        area.draw(&Text::new(kind.name(), (x + 16, 14), ("sans-serif", 14)))?;
        x += 24 + 8 * kind.name().len() as i32;
    }
    Ok(())
}

fn idle<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    out: &Outcome,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    if out.idle.is_empty() {
        return Ok(());
    }
    let n = out.idle.len();
    let top = out
        .idle
        .iter()
        .map(|i| i.per_connection())
        .fold(2048f64, f64::max)
        * 1.1;
    let connections = out.idle[0].connections;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("idle RSS per connection at {connections} connections (bytes; goal <= 1024)"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
    let names: Vec<&str> = out.idle.iter().map(|i| i.kind.name()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x.fract() - 0.5).abs() < 0.01 {
                names.get(i).map(|s| s.to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("bytes")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(out.idle.iter().enumerate().map(|(i, x)| {
        let v = x.per_connection().max(0.0);
        Rectangle::new(
            [(i as f64 + 0.2, 0.0), (i as f64 + 0.8, v)],
            color(x.kind).filled(),
        )
    }))?;
    chart.draw_series(LineSeries::new(
        vec![(0.0, 1024.0), (n as f64, 1024.0)],
        RED.stroke_width(1),
    ))?;
    Ok(())
}
