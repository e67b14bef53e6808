//! The page's charts, drawn here as inline SVG: lines over time (a gap in
//! the data is a gap in the line) and paired bars per day. Colours come
//! from the page's style sheet (a class per series), so that they follow
//! its light or dark scheme; every chart has a title for screen readers,
//! and the page puts its numbers in a table beside it.

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Timelike as _, Utc};
use chrono_tz::Tz;

/// The drawing area, in SVG user units (the chart scales to its box).
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
/// Room for the axis labels.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 6.0;

/// One line of a chart: its name (the legend), its CSS class, its values
/// (one per time; `None` is a gap).
#[derive(Debug)]
pub(super) struct Line<'a> {
    pub(super) name: &'a str,
    pub(super) class: &'a str,
    pub(super) values: Vec<Option<f64>>,
}

/// A round step for about four grid lines over `span`.
fn grid_step(span: f64) -> f64 {
    let raw = (span / 4.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// The y range: every value and zero, widened to whole grid steps.
fn y_range(lines: &[Line<'_>], fixed: Option<(f64, f64)>) -> (f64, f64, f64) {
    if let Some((lo, hi)) = fixed {
        return (lo, hi, grid_step(hi - lo));
    }
    let values = lines
        .iter()
        .flat_map(|l| l.values.iter().flatten().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let hi = if hi - lo < 1.0 { lo + 1.0 } else { hi };
    let step = grid_step(hi - lo);
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

/// A chart's y axis: its range and the step of its grid lines.
#[derive(Debug, Clone, Copy)]
struct Frame {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Frame {
    /// The y coordinate of `v`.
    fn y(self, v: f64) -> f64 {
        TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - (v - self.lo) / (self.hi - self.lo))
    }

    /// The chart's opening tag and title, and its grid lines labelled in `unit`.
    fn start(self, title: &str, unit: &str) -> String {
        let mut svg = format!(
            r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}" class="chart"><title>{title}</title>"#
        );
        let mut level = self.lo;
        while level <= self.hi + self.step / 2.0 {
            let _ = write!(
                svg,
                r#"<line class="grid" x1="{LEFT}" x2="{WIDTH}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
                y = self.y(level),
                tx = LEFT - 4.0,
                ty = self.y(level) + 4.0,
                label = format_number(level, unit),
            );
            level += self.step;
        }
        svg
    }
}

/// A chart of `lines` over `times` (evenly spaced), in `unit`; `fixed`: a
/// fixed y range (SOC: 0 to 100).
pub(super) fn lines(
    title: &str,
    times: &[DateTime<Utc>],
    lines: &[Line<'_>],
    unit: &str,
    fixed: Option<(f64, f64)>,
    tz: Tz,
) -> String {
    let (lo, hi, step) = y_range(lines, fixed);
    let frame = Frame { lo, hi, step };
    let n = times.len().max(2);
    let x = |i: usize| LEFT + (WIDTH - LEFT) * i as f64 / (n - 1) as f64;
    let y = |v: f64| frame.y(v);
    let mut svg = frame.start(title, unit);
    // A time label every 6 hours of the site's clock.
    for (i, at) in times.iter().enumerate() {
        let local = at.with_timezone(&tz);
        if local.minute() == 0 && local.hour() % 6 == 0 && x(i) < WIDTH - 20.0 {
            let _ = write!(
                svg,
                r#"<text class="axis" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                x(i),
                HEIGHT - 4.0,
                local.format("%H:%M")
            );
        }
    }
    for line in lines {
        let mut path = String::new();
        let mut pen_down = false;
        for (i, value) in line.values.iter().enumerate() {
            match value.filter(|v| v.is_finite()) {
                Some(v) => {
                    let _ = write!(
                        path,
                        "{}{:.1},{:.1}",
                        if pen_down { " L" } else { " M" },
                        x(i),
                        y(v.clamp(lo, hi))
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !path.is_empty() {
            let _ = write!(
                svg,
                r#"<path class="{}" d="{}"><title>{}</title></path>"#,
                line.class,
                path.trim_start(),
                line.name
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Bars per day: for each day, one bar per series (`None`: no bar).
pub(super) fn bars(title: &str, days: &[NaiveDate], series: &[Line<'_>]) -> String {
    let (_, hi, step) = y_range(series, None);
    let frame = Frame { lo: 0.0, hi, step };
    let y = |v: f64| frame.y(v);
    let slot = (WIDTH - LEFT) / days.len().max(1) as f64;
    let bar = (slot * 0.8 / series.len().max(1) as f64).max(1.0);
    let mut svg = frame.start(title, "kWh");
    for (d, day) in days.iter().enumerate() {
        let left = LEFT + slot * d as f64 + slot * 0.1;
        for (s, line) in series.iter().enumerate() {
            if let Some(Some(v)) = line.values.get(d).filter(|v| v.is_some_and(f64::is_finite)) {
                let top = y(v.max(0.0));
                let _ = write!(
                    svg,
                    r#"<rect class="{}" x="{:.1}" y="{top:.1}" width="{bar:.1}" height="{:.1}"><title>{day} {}: {v:.2} kWh</title></rect>"#,
                    line.class,
                    left + bar * s as f64,
                    (y(0.0) - top).max(0.0),
                    line.name,
                );
            }
        }
        if d % 7 == days.len().saturating_sub(1) % 7 {
            let _ = write!(
                svg,
                r#"<text class="axis" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                left + slot * 0.4,
                HEIGHT - 4.0,
                day.format("%d %b")
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// An axis label: whole numbers, with thousands of watts as kW.
fn format_number(value: f64, unit: &str) -> String {
    if unit == "W" && value.abs() >= 1000.0 {
        format!("{:.1} kW", value / 1000.0)
    } else if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_steps_are_round() {
        assert_eq!(grid_step(100.0), 25.0);
        assert_eq!(grid_step(3000.0), 1000.0);
        assert_eq!(grid_step(7.0), 2.0);
    }

    #[test]
    fn a_value_that_is_no_number_is_a_gap_not_a_hang() {
        let t = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 7, 0, 0, 0).unwrap();
        let times: Vec<_> = (0..3)
            .map(|i| t + chrono::Duration::minutes(5 * i))
            .collect();
        let line = Line {
            name: "PV",
            class: "pv",
            values: vec![Some(f64::INFINITY), Some(f64::NAN), Some(5.0)],
        };
        let svg = lines("t", &times, &[line], "W", None, chrono_tz::UTC);
        let d = svg
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(d.matches('M').count(), 1, "{d}");
        let day = [NaiveDate::from_ymd_opt(2026, 12, 7).unwrap()];
        let bars_svg = bars(
            "t",
            &day,
            &[Line {
                name: "PV",
                class: "pv",
                values: vec![Some(f64::INFINITY)],
            }],
        );
        assert!(!bars_svg.contains("<rect"));
    }

    #[test]
    fn a_gap_lifts_the_pen() {
        let t = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 7, 0, 0, 0).unwrap();
        let times: Vec<_> = (0..4)
            .map(|i| t + chrono::Duration::minutes(5 * i))
            .collect();
        let line = Line {
            name: "PV",
            class: "pv",
            values: vec![Some(1.0), Some(2.0), None, Some(3.0)],
        };
        let svg = lines("t", &times, &[line], "W", None, chrono_tz::UTC);
        let d = svg
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        // Two pieces: a line of two points, then a new start.
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 1, "{d}");
    }
}
