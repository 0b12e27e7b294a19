//! Human-readable output: a live view of running steps on a terminal (or
//! plain lines elsewhere), and a summary table at the end.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Event, EventKind, Level, Outcome, Sink, StepState};

/// Console output for people.
pub struct ConsoleSink {
    level: Level,
    live: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    rows: Vec<Row>,
    started: Instant,
    /// Plain lines, without the live view: queued, never blocking the run.
    out: super::queue::QueuedWriter,
}

struct Row {
    step: String,
    state: StepState,
    duration: Option<Duration>,
    note: String,
}

impl ConsoleSink {
    /// `live` draws spinners (use only when stderr is a terminal).
    pub fn new(level: Level, live: bool) -> ConsoleSink {
        ConsoleSink {
            level,
            live: live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: HashMap::new(),
            rows: Vec::new(),
            started: Instant::now(),
            out: super::queue::QueuedWriter::stderr(),
        }
    }

    fn print(&mut self, line: &str) {
        match &self.live {
            Some(multi) => {
                let _ = multi.println(line);
            }
            None => {
                let _ = writeln!(self.out, "{line}");
            }
        }
    }

    fn row(&mut self, step: &str) -> &mut Row {
        if let Some(i) = self.rows.iter().position(|r| r.step == step) {
            return &mut self.rows[i];
        }
        self.rows.push(Row {
            step: step.to_string(),
            state: StepState::Pending,
            duration: None,
            note: String::new(),
        });
        self.rows.last_mut().expect("row was just pushed")
    }

    fn stop_bar(&mut self, step: &str) {
        if let Some(bar) = self.bars.remove(step) {
            bar.finish_and_clear();
        }
    }

    fn summary(&self, outcome: Outcome, exit_code: i32, total: Duration) -> String {
        let width = self
            .rows
            .iter()
            .map(|r| r.step.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!(
            "\n{:<width$}  {:<9}  {:>9}  NOTE\n",
            "STEP", "STATE", "DURATION"
        );
        for row in &self.rows {
            let duration = row
                .duration
                .map(format_duration)
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<width$}  {:<9}  {:>9}  {}\n",
                row.step,
                row.state.as_str(),
                duration,
                row.note
            ));
        }
        out.push_str(&format!(
            "\n{} in {} (exit {exit_code})",
            outcome.as_str().to_uppercase(),
            format_duration(total)
        ));
        out
    }
}

fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

impl Sink for ConsoleSink {
    fn event(&mut self, event: &Event) {
        let level_ok = event.kind.level() <= self.level;
        match &event.kind {
            EventKind::RunStarted {
                plan,
                steps,
                bootstrap_id,
                ..
            } => {
                self.started = Instant::now();
                for (name, _) in steps {
                    self.row(name);
                }
                self.print(&format!(
                    "bootplan: running plan {plan} ({} steps, bootstrap {bootstrap_id})",
                    steps.len()
                ));
            }
            EventKind::StepSkipped { step, reason } => {
                let row = self.row(step);
                row.state = StepState::Skipped;
                row.note = reason.clone();
                if level_ok {
                    self.print(&format!("  ↷ {step}: skipped ({reason})"));
                }
            }
            EventKind::StepStarted { step } => {
                self.row(step).state = StepState::Running;
                match &self.live {
                    Some(multi) => {
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        bar.set_message(step.clone());
                        bar.enable_steady_tick(Duration::from_millis(100));
                        self.bars.insert(step.clone(), bar);
                    }
                    None if level_ok => self.print(&format!("  ▶ {step}")),
                    None => {}
                }
            }
            EventKind::AttemptFailed {
                step,
                attempt,
                error,
                retry_in,
            } => {
                if level_ok {
                    let retry = retry_in
                        .map(|d| format!(", retrying in {}", format_duration(d)))
                        .unwrap_or_default();
                    self.print(&format!(
                        "  ! {step}: attempt {attempt} failed [{}] {}{retry}",
                        error.code, error.message
                    ));
                }
            }
            EventKind::Output { step, line, .. } => {
                if level_ok {
                    self.print(&format!("    [{step}] {line}"));
                }
            }
            EventKind::Waiting {
                step,
                target,
                elapsed,
            } => {
                if level_ok {
                    self.print(&format!(
                        "  … {step}: still waiting for {target} after {}s",
                        elapsed.as_secs()
                    ));
                }
            }
            EventKind::StartSplay { delay } => {
                if level_ok {
                    self.print(&format!(
                        "bootplan: start splay: the first step's work waits {}",
                        format_duration(*delay)
                    ));
                }
            }
            EventKind::Queued {
                step,
                semaphore,
                position,
                slots,
                elapsed,
            } => {
                self.row(step).state = StepState::Waiting;
                if level_ok {
                    self.print(&format!(
                        "  … {step}: waiting for {} after {}s",
                        super::event::queue_place(semaphore, *position, *slots),
                        elapsed.as_secs()
                    ));
                }
            }
            EventKind::SlotAcquired {
                step,
                semaphore,
                waited,
                throttled,
            } => {
                let row = self.row(step);
                row.state = StepState::Running;
                row.note = if *throttled {
                    format!(
                        "queued {} for semaphore {semaphore}",
                        format_duration(*waited)
                    )
                } else {
                    format!("ran without a slot of semaphore {semaphore}")
                };
                if level_ok {
                    self.print(&format!(
                        "  ▶ {step}: {}",
                        super::event::slot_message(semaphore, *waited, *throttled)
                    ));
                }
            }
            EventKind::StepFinished {
                step,
                state,
                duration,
                error,
                ..
            } => {
                self.stop_bar(step);
                let row = self.row(step);
                row.state = *state;
                row.duration = Some(*duration);
                if let Some(e) = error {
                    row.note = format!("{}: {}", e.code, e.message);
                }
                let mark = match state {
                    StepState::Done => "✓",
                    StepState::Failed => "✗",
                    _ => "■",
                };
                if level_ok || *state == StepState::Failed {
                    let detail = error
                        .as_ref()
                        .map(|e| format!(" [{}] {}", e.code, e.message))
                        .unwrap_or_default();
                    self.print(&format!(
                        "  {mark} {step} {} in {}{detail}",
                        state.as_str(),
                        format_duration(*duration)
                    ));
                }
            }
            EventKind::StepNotRun { step, reason } => {
                let row = self.row(step);
                row.state = StepState::NotRun;
                row.note = reason.clone();
            }
            EventKind::UndoFinished { step, error } => {
                let msg = match error {
                    None => format!("  ↶ {step}: undone"),
                    Some(e) => format!("  ↶ {step}: undo failed [{}] {}", e.code, e.message),
                };
                self.print(&msg);
            }
            EventKind::Notice { level, message } => {
                if *level <= self.level {
                    self.print(&format!("bootplan: {}: {message}", level.as_str()));
                }
            }
            EventKind::Health { problems } => match problems.as_slice() {
                [] => self.print("bootplan: healthy again"),
                _ => self.print(&format!("bootplan: degraded: {}", problems.join("; "))),
            },
            EventKind::AttemptStarted { .. } => {}
            EventKind::RunFinished {
                outcome,
                exit_code,
                error,
                ..
            } => {
                let names: Vec<String> = self.bars.keys().cloned().collect();
                for name in names {
                    self.stop_bar(&name);
                }
                let mut text = self.summary(*outcome, *exit_code, self.started.elapsed());
                if let Some(e) = error {
                    text.push_str(&format!(
                        "\nerror [{}]: {}\n  see docs/runbook.md#{}",
                        e.code,
                        e.message,
                        e.code.as_str().replace('.', "")
                    ));
                }
                self.print(&text);
            }
        }
    }

    fn finish(&mut self) {
        if let Some(multi) = &self.live {
            let _ = multi.clear();
        }
        let _ = self.out.flush();
    }
}
