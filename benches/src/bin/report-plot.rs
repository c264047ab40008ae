//! Draws one group of `benches/report`'s table as an SVG bar chart (plotters).
//!
//! `report-plot IN.tsv OUT.svg`: IN's first line is the title; every other line is one
//! row, tab-separated: `label  ratio  target  better  verdict`, where `ratio` is ours
//! divided by the peer, `target` the bound on it (empty: none), `better`
//! `higher` or `lower` (which way the ratio should go), and `verdict` PASS, MISS or
//! `-`. Each row is a horizontal bar (green PASS, red MISS, grey without a target) on a
//! logarithmic axis with the parity line at 1.0 and the target as a black tick.

use std::error::Error;
use std::process::ExitCode;

use plotters::prelude::*;

/// One bar.
struct Row {
    label: String,
    ratio: f64,
    target: Option<f64>,
    lower_is_better: bool,
    verdict: String,
}

fn parse(text: &str) -> Result<(String, Vec<Row>), String> {
    let mut lines = text.lines();
    let title = lines.next().ok_or("empty input")?.to_string();
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let [label, ratio, target, better, verdict] = f[..] else {
            return Err(format!("line {}: expected 5 tab-separated fields", n + 2));
        };
        let ratio: f64 = ratio
            .parse()
            .map_err(|_| format!("line {}: ratio {ratio:?} is not a number", n + 2))?;
        let target = match target {
            "" => None,
            t => Some(
                t.parse()
                    .map_err(|_| format!("line {}: target {t:?} is not a number", n + 2))?,
            ),
        };
        if !(ratio.is_finite() && ratio > 0.0) {
            continue; // not measured: nothing to draw
        }
        rows.push(Row {
            label: label.to_string(),
            ratio,
            target,
            lower_is_better: better == "lower",
            verdict: verdict.to_string(),
        });
    }
    Ok((title, rows))
}

fn draw(title: &str, rows: &[Row], out: &str) -> Result<(), Box<dyn Error>> {
    let height = 90 + 26 * rows.len().max(1) as u32;
    let root = SVGBackend::new(out, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let values = rows
        .iter()
        .flat_map(|r| [Some(r.ratio), r.target])
        .flatten()
        .chain([1.0]);
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = (lo / 1.5, hi * 1.5);
    let n = rows.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(330)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..n)?;
    let label_of = |y: &f64| {
        let i = (n - y - 0.5).round();
        if (y - (n - i - 0.5)).abs() < 1e-6 && i >= 0.0 {
            rows.get(i as usize).map_or(String::new(), |r| {
                let arrow = if r.lower_is_better { "lower" } else { "higher" };
                format!("{} ({arrow} is better)", r.label)
            })
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(2 * rows.len() + 1)
        .y_label_formatter(&label_of)
        .x_desc("ours / peer (log scale)")
        .x_label_formatter(&|x| format!("{x:.2}x"))
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let y = n - i as f64 - 0.5;
        let color = match r.verdict.as_str() {
            "PASS" => GREEN.mix(0.7),
            "MISS" => RED.mix(0.7),
            _ => BLACK.mix(0.3),
        };
        chart.draw_series([Rectangle::new(
            [(lo, y - 0.35), (r.ratio, y + 0.35)],
            color.filled(),
        )])?;
        chart.draw_series([Text::new(
            format!("{:.2}x", r.ratio),
            (r.ratio * 1.02, y + 0.2),
            ("sans-serif", 12),
        )])?;
        if let Some(t) = r.target {
            chart.draw_series(LineSeries::new(
                [(t, y - 0.45), (t, y + 0.45)],
                BLACK.stroke_width(3),
            ))?;
        }
    }
    chart.draw_series(LineSeries::new(
        [(1.0, 0.0), (1.0, n)],
        BLUE.stroke_width(1),
    ))?;
    root.present()?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = &args[..] else {
        eprintln!("usage: report-plot IN.tsv OUT.svg");
        return ExitCode::from(2);
    };
    let result = std::fs::read_to_string(input)
        .map_err(|e| format!("{input}: {e}"))
        .and_then(|text| parse(&text))
        .and_then(|(title, rows)| draw(&title, &rows, output).map_err(|e| e.to_string()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("report-plot: {e}");
            ExitCode::FAILURE
        }
    }
}
