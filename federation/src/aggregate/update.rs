//! The training round: each bank's weighted update, loss and counts in one vector.

use super::*;

/// The training round: `w·Δ`, `w·loss`, and counts.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateEncoding {
    layout: Layout,
    params: usize,
    clip: f64,
    max_rows: u64,
}

/// What the coordinator learns from one training round: sums over the surviving
/// banks only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundSum {
    /// Row-weighted mean update.
    pub delta: Vec<f64>,
    /// Rows over the contributing banks.
    pub rows: u64,
    /// Row-weighted mean log-loss of the global model before the round.
    pub loss_before: f64,
    /// Examples drawn by DP-SGD over the banks.
    pub examples: u64,
    /// Examples whose gradient was clipped.
    pub clipped_examples: u64,
    /// Update values clipped by the quantizer.
    pub clipped_values: u64,
}

/// Log-losses above this are clipped (a model that bad has diverged anyway).
const LOSS_CLIP: f64 = 20.0;

impl UpdateEncoding {
    /// For models of `params` parameters, updates clipped to `[-clip, clip]` per
    /// value, banks of at most `max_rows` rows.
    pub fn new(
        params: usize,
        clip: f64,
        max_rows: u64,
        max_contributors: usize,
    ) -> Result<Self, ProtocolError> {
        let layout = Layout::new(
            vec![
                Segment::real("weighted update", params, clip),
                Segment::real("weighted loss", 1, LOSS_CLIP),
                Segment::count("counts", 4),
            ],
            max_contributors,
        )?;
        Ok(Self {
            layout,
            params,
            clip,
            max_rows,
        })
    }

    /// The layout of the round's vector.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// One bank's contribution: its update over `rows` rows. Returns the words and the
    /// number of update values the quantizer clipped (also inside the vector).
    pub fn encode(&self, u: &LocalUpdate, rows: u64) -> Result<(Vec<u32>, u64), ProtocolError> {
        if rows == 0 || rows > self.max_rows {
            return Err(ProtocolError::InvalidInput(format!(
                "{rows} rows; 1 to max_rows = {} per bank",
                self.max_rows
            )));
        }
        if u.delta.len() != self.params {
            return Err(ProtocolError::InvalidInput(format!(
                "update of {} values for a model of {}",
                u.delta.len(),
                self.params
            )));
        }
        let w = rows as f64 / self.max_rows as f64;
        let weighted: Vec<f32> = u.delta.iter().map(|d| (f64::from(*d) * w) as f32).collect();
        let loss = [(u.loss_before.min(LOSS_CLIP) * w) as f32];
        // The quantizer's clip count travels inside the vector too, so count it first
        // (the loss is already capped below its clip range).
        let clipped = weighted
            .iter()
            .filter(|v| f64::from(**v).abs() > self.clip)
            .count();
        let counts = [rows, u.examples, u.clipped_examples, clipped as u64];
        let (words, encoded_clipped) = self.layout.encode(&[
            Part::Real(&weighted),
            Part::Real(&loss),
            Part::Count(&counts),
        ])?;
        debug_assert_eq!(encoded_clipped, clipped);
        Ok((words, clipped as u64))
    }

    /// The round's result from the aggregated sum.
    pub fn decode(&self, sum: &[u32], contributors: usize) -> RoundSum {
        let parts = self.layout.decode(sum, contributors);
        let rows = parts[2][0];
        let total_w = rows / self.max_rows as f64;
        let delta = parts[0]
            .iter()
            .map(|v| if total_w > 0.0 { v / total_w } else { 0.0 })
            .collect();
        RoundSum {
            delta,
            rows: rows as u64,
            loss_before: if total_w > 0.0 {
                parts[1][0] / total_w
            } else {
                f64::NAN
            },
            examples: parts[2][1] as u64,
            clipped_examples: parts[2][2] as u64,
            clipped_values: parts[2][3] as u64,
        }
    }
}
