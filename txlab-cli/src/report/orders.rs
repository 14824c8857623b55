//! The sampled orders of a cell (`workflows.json`) drawn as swim lanes:
//! one panel per order, one lane per participant, a bar for each call or
//! wait the order service recorded, so a reader sees where the slowest
//! order spent its time and what a failed one did.

use std::path::Path;

use plotters::prelude::*;
use txlab_api::order::Workflow;
use txlab_api::Step;

use super::charts::{canvas, drawing_error, header, lighter, method_colour, Area, FONT, WIDTH};
use crate::results::workflows::Sampled;

/// Height of one order's panel.
const PANEL: u32 = 170;

/// What a bar stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// A forward step: from its call (or, with no call, the last thing
    /// heard before) until its result was recorded.
    Forward { refused: bool },
    /// A business compensation, from its start until it was done.
    Compensation,
    /// A two-phase vote, from the intent to ask until the vote.
    Vote { yes: bool },
    /// Phase two, from the decision until the participant was done.
    PhaseTwo,
}

/// One bar of a lane, in ms since the order was created.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub step: Step,
    pub from_ms: f64,
    pub to_ms: f64,
    pub span: Span,
}

/// The bars of one order's records.
pub fn bars(w: &Workflow) -> Vec<Bar> {
    let t0 = w.order.created_ms;
    let rel = |t: i64| (t - t0) as f64;
    let mut out = Vec::new();
    // Event-driven steps have no call: each starts where the last heard one ended.
    let mut last_heard = t0;
    for s in &w.steps {
        if let Some(end) = s.forward_ended_ms {
            // twopc/tcc mark the effects standing at the end, not a call.
            if w.branches.is_empty() {
                let start = s.forward_started_ms.unwrap_or(last_heard);
                out.push(Bar {
                    step: s.step,
                    from_ms: rel(start),
                    to_ms: rel(end),
                    span: Span::Forward {
                        refused: s.forward != "done",
                    },
                });
                last_heard = last_heard.max(end);
            }
        }
        if let Some(end) = s.compensation_ended_ms {
            let start = s.compensation_started_ms.unwrap_or(end);
            out.push(Bar {
                step: s.step,
                from_ms: rel(start),
                to_ms: rel(end),
                span: Span::Compensation,
            });
        }
    }
    for b in &w.branches {
        if let (Some(asked), Some(voted)) = (b.asked_ms, b.voted_ms) {
            out.push(Bar {
                step: b.step,
                from_ms: rel(asked),
                to_ms: rel(voted),
                span: Span::Vote { yes: b.vote == "yes" },
            });
        }
        if let (Some(d), Some(done)) = (&w.decision, b.phase2_ended_ms) {
            out.push(Bar {
                step: b.step,
                from_ms: rel(d.decided_ms),
                to_ms: rel(done),
                span: Span::PhaseTwo,
            });
        }
    }
    out
}

const REFUSED: RGBColor = RGBColor(220, 0, 0);
const COMPENSATION: RGBColor = RGBColor(255, 150, 0);

fn colour(method: &str, span: Span) -> RGBColor {
    let c = method_colour(method);
    match span {
        Span::Forward { refused: false } | Span::Vote { yes: true } => c,
        Span::Forward { refused: true } | Span::Vote { yes: false } => REFUSED,
        Span::Compensation => COMPENSATION,
        Span::PhaseTwo => lighter(c, 0.5),
    }
}

/// Height of the chart of `n` sampled orders.
pub fn height(n: usize) -> u32 {
    76 + PANEL * n.max(1) as u32
}

/// Draws a cell's sampled orders into `path`.
pub fn draw(cell: &str, method: &str, sampled: &[Sampled], path: &Path) -> anyhow::Result<()> {
    let root = canvas(path, (WIDTH, height(sampled.len())))?;
    let c = method_colour(method);
    let two_phase = sampled.iter().any(|s| !s.workflow.branches.is_empty());
    let mut items = vec![];
    if two_phase {
        items.push(("vote".to_string(), c));
        items.push(("phase two".to_string(), lighter(c, 0.5)));
    } else {
        items.push(("step".to_string(), c));
    }
    items.push(("refused / no vote".to_string(), REFUSED));
    items.push(("compensation".to_string(), COMPENSATION));
    items.push(("decided".to_string(), BLACK));
    let body = header(&root, &format!("{cell}: sampled orders over time"), &items)?;
    let panels = body.split_evenly((sampled.len().max(1), 1));
    for (panel, s) in panels.iter().zip(sampled) {
        draw_order(panel, method, s)?;
    }
    root.present().map_err(drawing_error)
}

fn draw_order(area: &Area<'_>, method: &str, s: &Sampled) -> anyhow::Result<()> {
    let w = &s.workflow;
    let bars = bars(w);
    let decided = w.order.decided_ms.map(|d| (d - w.order.created_ms) as f64);
    let x_max = bars.iter().map(|b| b.to_ms).chain(decided).fold(1.0, f64::max) * 1.05;
    let lanes: Vec<String> = Step::ALL.iter().rev().map(|s| s.to_string()).collect();
    let id = w.order.id.to_string();
    let caption = format!(
        "{}: {} in {:.0} ms (order {})",
        s.label,
        w.order.state,
        s.decided_ms,
        &id[..8]
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 15))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..x_max, 0f64..Step::ALL.len() as f64)
        .map_err(drawing_error)?;
    chart
        .configure_mesh()
        .x_desc("ms since the order was created")
        .x_label_formatter(&|x: &f64| format!("{x:.0}"))
        .y_labels(Step::ALL.len() * 2 + 1)
        .y_label_formatter(&|y: &f64| {
            let lane = *y - 0.5;
            if lane >= 0.0 && lane.fract().abs() < 1e-9 {
                lanes.get(lane as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .disable_y_mesh()
        .label_style((FONT, 12))
        .draw()
        .map_err(drawing_error)?;
    let lane_of = |step: Step| (Step::ALL.len() - 1 - step.index()) as f64;
    chart
        .draw_series(bars.iter().map(|b| {
            let y = lane_of(b.step);
            // Thin spans stay visible.
            let to = b.to_ms.max(b.from_ms + x_max / 300.0);
            Rectangle::new(
                [(b.from_ms, y + 0.2), (to, y + 0.8)],
                colour(method, b.span).filled(),
            )
        }))
        .map_err(drawing_error)?;
    if let Some(d) = decided {
        chart
            .draw_series([PathElement::new(
                vec![(d, 0.0), (d, Step::ALL.len() as f64)],
                BLACK.stroke_width(2),
            )])
            .map_err(drawing_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use txlab_api::order::{BranchView, DecisionView, OrderState, OrderView, StepRecordView};
    use uuid::Uuid;

    fn view(method: txlab_api::TxMode, state: OrderState) -> OrderView {
        OrderView {
            id: Uuid::new_v4(),
            state,
            customer: "c".into(),
            amount: 1,
            slot: "s".into(),
            items: vec![],
            reason: None,
            method,
            created_ms: 1_000,
            decided_ms: Some(1_090),
        }
    }

    fn step(
        step: Step,
        fwd: (&str, Option<i64>, Option<i64>),
        comp: (Option<i64>, Option<i64>),
    ) -> StepRecordView {
        StepRecordView {
            step,
            forward: fwd.0.into(),
            compensation: if comp.1.is_some() { "done" } else { "not_started" }.into(),
            attempts: 1,
            reason: None,
            forward_started_ms: fwd.1,
            forward_ended_ms: fwd.2,
            compensation_started_ms: comp.0,
            compensation_ended_ms: comp.1,
        }
    }

    fn saga_refused_at_inventory() -> Workflow {
        Workflow {
            order: view(txlab_api::TxMode::SagaOrch, OrderState::Rejected),
            driver: Some(1),
            steps: vec![
                step(
                    Step::Payment,
                    ("done", Some(1_000), Some(1_020)),
                    (Some(1_040), Some(1_060)),
                ),
                step(
                    Step::Inventory,
                    ("rejected", Some(1_020), Some(1_040)),
                    (None, None),
                ),
                step(Step::Shipping, ("not_started", None, None), (None, None)),
            ],
            branches: vec![],
            decision: None,
            events: vec![],
        }
    }

    #[test]
    fn a_saga_shows_its_calls_its_refusal_and_its_compensation() {
        let bars = bars(&saga_refused_at_inventory());
        assert_eq!(
            bars.iter()
                .map(|b| (b.step, b.from_ms, b.to_ms, b.span))
                .collect::<Vec<_>>(),
            [
                (Step::Payment, 0.0, 20.0, Span::Forward { refused: false }),
                (Step::Payment, 40.0, 60.0, Span::Compensation),
                (Step::Inventory, 20.0, 40.0, Span::Forward { refused: true }),
            ]
        );
    }

    #[test]
    fn heard_steps_start_where_the_last_heard_one_ended_and_two_phase_shows_votes() {
        let mut chor = saga_refused_at_inventory();
        chor.steps[0].forward_started_ms = None;
        chor.steps[1].forward_started_ms = None;
        let b = bars(&chor);
        assert_eq!((b[0].from_ms, b[2].from_ms), (0.0, 20.0));

        let mut tp = saga_refused_at_inventory();
        tp.steps.iter_mut().for_each(|s| {
            s.forward = "done".into();
            s.forward_ended_ms = Some(1_080);
            s.compensation_ended_ms = None;
        });
        tp.branches = Step::ALL
            .iter()
            .map(|&step| BranchView {
                step,
                vote: "yes".into(),
                phase2: "done".into(),
                attempts: 1,
                reason: None,
                asked_ms: Some(1_001),
                voted_ms: Some(1_010 + 10 * step.index() as i64),
                phase2_ended_ms: Some(1_075),
            })
            .collect();
        tp.decision = Some(DecisionView {
            decision: "commit".into(),
            presumed: false,
            decided_ms: 1_050,
        });
        let b = bars(&tp);
        assert_eq!(b.len(), 6, "a vote and a phase two per participant: {b:?}");
        assert!(b.iter().all(|x| !matches!(x.span, Span::Forward { .. })));
        assert_eq!(
            (b[5].from_ms, b[5].to_ms, b[5].span),
            (50.0, 75.0, Span::PhaseTwo)
        );
    }

    #[test]
    fn the_chart_is_a_png_with_a_panel_per_order() {
        let sampled = vec![
            Sampled {
                label: "fastest".into(),
                decided_ms: 90.0,
                workflow: saga_refused_at_inventory(),
            },
            Sampled {
                label: "rejected".into(),
                decided_ms: 95.0,
                workflow: saga_refused_at_inventory(),
            },
        ];
        let path = std::env::temp_dir().join(format!("txlab-orders-{}.png", std::process::id()));
        draw("c", "saga_orch", &sampled, &path).unwrap();
        let (w, h, _, _) = crate::report::charts::tests::decode(&path);
        assert_eq!((w, h), (WIDTH, height(2)));
        let count = |rgb: RGBColor| crate::report::charts::tests::count_rgb(&path, [rgb.0, rgb.1, rgb.2]);
        assert!(count(method_colour("saga_orch")) > 500, "the steps drawn");
        assert!(count(REFUSED) > 500, "the refusal drawn");
        assert!(count(COMPENSATION) > 300, "the compensation drawn");
        std::fs::remove_file(&path).unwrap();
    }
}
