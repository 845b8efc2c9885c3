//! The plan as the table `e2e-tal plan` prints.

use std::fmt;

use super::{MemoryPlan, PlanRow};

/// Bytes as GiB with two decimals (MiB below 1 GiB).
pub fn human(bytes: usize) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2} GiB")
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Predicted peak memory of one training step: {}",
            self.title
        )?;
        if let Some(b) = self.budget {
            writeln!(f, "Budget: {}", human(b))?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "| strategy | r_t | r_s | frame | weights | optimizer | gradients | held for backward | largest transient | input | peak | fits |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        let chosen = self.recommended();
        for r in &self.rows {
            let m = &r.memory;
            let fits = match self.fits(r) {
                None => "",
                Some(true) => "yes",
                Some(false) => "no",
            };
            let mark = if chosen == Some(r) {
                " (recommended)"
            } else {
                ""
            };
            writeln!(
                f,
                "| {} | {} | {:.3} | {}x{} | {} | {} | {} | {} | {} | {} | {} | {fits}{mark} |",
                r.strategy,
                r.fidelity.temporal,
                r.fidelity.spatial,
                r.frame_size.0,
                r.frame_size.1,
                human(m.weights),
                human(m.optimizer),
                human(m.gradients),
                human(m.held),
                human(m.transient),
                human(m.input),
                human(m.total),
            )?;
        }
        if self.budget.is_some() {
            writeln!(f)?;
            match chosen {
                Some(r) => write!(f, "Recommended: {}", describe(r)),
                None => write!(f, "Nothing fits the budget."),
            }?;
        }
        Ok(())
    }
}

/// `strategy at r_t, r_s (frame), peak`.
pub fn describe(r: &PlanRow) -> String {
    let lofi = if r.fidelity.temporal == 1 && r.fidelity.spatial == 1.0 {
        "full fidelity".to_string()
    } else {
        format!(
            "LoFi r_t {}, r_s {:.3}",
            r.fidelity.temporal, r.fidelity.spatial
        )
    };
    format!(
        "{} at {lofi} ({}x{} frames), {} predicted",
        r.strategy,
        r.frame_size.0,
        r.frame_size.1,
        human(r.memory.total)
    )
}
