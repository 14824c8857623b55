//! `index.html`: one self-contained page per run — the charts beside it,
//! the summary table, and the run's manifest (run.json) — readable offline.

use std::fmt::Write as _;

use txlab_api::order::OrderState;

use crate::results::CellSummary;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page, given the run's id, its manifest and the chart file names.
pub fn page(run_id: &str, manifest: &serde_json::Value, cells: &[CellSummary], charts: &[String]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>txlab run {id}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:13px}}\
         td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child,td:nth-child(2),th{{text-align:left}}\
         .bad{{color:#c00;font-weight:bold}}img{{max-width:100%;display:block;margin:1em 0}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style>\n\
         </head><body>\n<h1>txlab run {id}</h1>\n",
        id = esc(run_id)
    );
    let bad: usize = cells.iter().map(|s| s.violations).sum();
    let _ = writeln!(
        out,
        "<p>{} cells; audit violations: <span class=\"{}\">{bad}</span>.</p>",
        cells.len(),
        if bad > 0 { "bad" } else { "" }
    );
    out += "<p>Tables beside this page: <a href=\"summary.csv\">summary.csv</a> (a line per cell over its \
            repetitions), <a href=\"repetitions.csv\">repetitions.csv</a>, <a href=\"percentiles.csv\">percentiles.csv</a>, \
            <a href=\"summary.md\">summary.md</a>.</p>\n";
    for c in charts {
        let _ = writeln!(out, "<img src=\"{0}\" alt=\"{0}\">", esc(c));
    }
    out += "<h2>Cells</h2>\n<table><tr><th>method</th><th>scenario</th><th>chaos</th><th>rate target→got</th><th>orders</th>\
            <th>confirmed</th><th>rejected</th><th>cancelled</th><th>needs attention</th><th>unexpected</th><th>failed</th>\
            <th>decided p50 ms</th><th>decided p99 ms</th><th>violations</th></tr>\n";
    for s in cells {
        let n = |st: OrderState| s.outcomes.get(st.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}→{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td class=\"{}\">{}</td></tr>",
            esc(&s.method),
            esc(&s.scenario),
            esc(&s.chaos),
            s.target_rate,
            s.achieved_rate,
            s.sent,
            n(OrderState::Confirmed),
            n(OrderState::Rejected),
            n(OrderState::Cancelled),
            n(OrderState::NeedsAttention),
            s.unexpected,
            s.errors + s.undecided + s.dropped,
            s.decided_ms.p50,
            s.decided_ms.p99,
            if s.violations > 0 { "bad" } else { "" },
            s.violations
        );
    }
    out += "</table>\n<h2>Run manifest</h2>\n<pre>";
    out += &esc(&serde_json::to_string_pretty(manifest).unwrap_or_default());
    // Marks on the body how many charts the browser decoded, for
    // scripts/check-report.sh to read from headless Chromium's DOM.
    out += "</pre>\n<script>addEventListener('load', () => { const i = [...document.images]; \
            document.body.dataset.charts = i.filter(x => x.naturalWidth > 0).length + '/' + i.length; });</script>\n\
            </body></html>\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_charts_cells_and_manifest_and_escapes_text() {
        let cell: CellSummary = serde_json::from_value(serde_json::json!({
            "index": 0, "cell": "c", "method": "tcc", "scenario": "<b>odd</b>", "replicas": 1, "repetition": 1,
            "expect": "confirmed", "target_rate": 20.0, "achieved_rate": 19.5, "scheduled": 10, "sent": 10,
            "accepted": 10, "decided": 10, "late": 0, "dropped": 0, "errors": 0, "undecided": 0, "unexpected": 0,
            "outcomes": {"confirmed": 10}, "error_kinds": {}, "unexpected_examples": [],
            "accepted_ms": crate::results::Percentiles::default(), "decided_ms": crate::results::Percentiles::default(),
            "quiesce_ms": 5, "settled": true, "violations": 2, "violations_by_invariant": {},
            "notification_lag_p50_ms": null, "notification_lag_max_ms": null
        }))
        .unwrap();
        let html = page(
            "run-1",
            &serde_json::json!({"seed": 7}),
            &[cell],
            &["latency.png".into()],
        );
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("<img src=\"latency.png\""));
        assert!(html.contains("&lt;b&gt;odd&lt;/b&gt;") && !html.contains("<b>odd"));
        assert!(html.contains("audit violations: <span class=\"bad\">2</span>"));
        assert!(html.contains("&quot;seed&quot;: 7"));
        assert!(html.contains("<a href=\"summary.csv\">"));
    }
}
