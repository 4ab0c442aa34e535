//! A deterministic generator of the fraud scenario's data: per bank, Delta tables
//! `transactions` and `logins`, a label table, and a copy of the feature repo.
//!
//! Realism that matters for the features:
//! - activity is Zipf-skewed: a few customers are very active, most are not;
//! - each customer has a few devices, a few usual IPs (home, work, mobile) and a
//!   typical amount (log-normal);
//! - fraud is account takeover: a burst of larger transactions from a new device and
//!   a new IP, preceded by a login from that IP; banks differ in fraud rate (non-IID).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{
    BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::protocol::SaveMode;
use quiver_featurestore::delta;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};

/// The example's feature repo, copied into every bank's folder.
pub const FEATURE_REPO: &str = include_str!("../fraud/repo/features.yaml");
/// The WebAssembly UDF the repo's `user_device_novelty` view calls (`udfs/jaccard.wat`).
pub const JACCARD_UDF: &str = include_str!("../../udfs/jaccard.wat");

/// Fraud rates of the first banks; more banks cycle through them.
const FRAUD_RATES: [f64; 3] = [0.004, 0.012, 0.03];
const US_PER_S: i64 = 1_000_000;
const US_PER_DAY: i64 = 86_400 * US_PER_S;

/// Generator settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of banks.
    pub banks: usize,
    /// Customers per bank.
    pub users: usize,
    /// Transactions per bank.
    pub transactions: usize,
    /// Days covered.
    pub days: i64,
    /// Random seed; the same seed writes the same data.
    pub seed: u64,
    /// First day, microseconds since the epoch (UTC).
    pub start_us: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            banks: 3,
            users: 20_000,
            transactions: 300_000,
            days: 60,
            seed: 42,
            start_us: 1_704_067_200 * US_PER_S, // 2024-01-01
        }
    }
}

/// What was written for one bank.
#[derive(Debug, Clone)]
pub struct BankData {
    /// Bank name (`bank_a`, ...).
    pub name: String,
    /// Its folder: a feature repo with `data/` and `labels.parquet`.
    pub dir: PathBuf,
    /// Transactions written.
    pub transactions: usize,
    /// Fraudulent transactions among them.
    pub fraud: usize,
    /// Logins written.
    pub logins: usize,
    /// Rows in the label table.
    pub labels: usize,
}

/// `bank_a`, `bank_b`, ...
pub fn bank_name(i: usize) -> String {
    let mut s = String::new();
    let mut n = i;
    loop {
        s.insert(0, (b'a' + (n % 26) as u8) as char);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("bank_{s}")
}

struct Customer {
    id: i64,
    devices: Vec<String>,
    /// Home, work, mobile: the few IPs a customer uses.
    ips: Vec<String>,
    amount: LogNormal<f64>,
}

#[derive(Default)]
struct Txns {
    user: Vec<i64>,
    ts: Vec<i64>,
    amount: Vec<f64>,
    merchant: Vec<String>,
    device: Vec<String>,
    ip: Vec<String>,
    fraud: Vec<bool>,
}

#[derive(Default)]
struct Logins {
    user: Vec<i64>,
    ts: Vec<i64>,
    ip: Vec<String>,
    device: Vec<String>,
}

fn ip(rng: &mut StdRng, first: u8) -> String {
    format!(
        "{first}.{}.{}.{}",
        rng.random_range(0..=255u8),
        rng.random_range(0..=255u8),
        rng.random_range(1..=254u8)
    )
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Generate every bank into `out`, replacing what is there.
pub async fn generate(cfg: &Config, out: &Path) -> Result<Vec<BankData>> {
    anyhow::ensure!(
        cfg.banks >= 1 && cfg.users >= 1 && cfg.transactions >= 1 && cfg.days >= 1,
        "banks, users, transactions and days must be positive"
    );
    let mut banks = Vec::with_capacity(cfg.banks);
    for b in 0..cfg.banks {
        banks.push(generate_bank(cfg, b, out).await?);
    }
    Ok(banks)
}

async fn generate_bank(cfg: &Config, b: usize, out: &Path) -> Result<BankData> {
    let name = bank_name(b);
    let dir = out.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    // Each bank owns its copy of the views (tenant = bank name when served).
    std::fs::write(
        dir.join("features.yaml"),
        FEATURE_REPO.replace("owner: bank\n", &format!("owner: {name}\n")),
    )?;
    std::fs::create_dir_all(dir.join("udfs"))?;
    std::fs::write(dir.join("udfs").join("jaccard.wat"), JACCARD_UDF)?;

    let mut rng =
        StdRng::seed_from_u64(cfg.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(b as u64 + 1)));
    let fraud_rate =
        FRAUD_RATES[b % FRAUD_RATES.len()] * (1.0 + (b / FRAUD_RATES.len()) as f64 * 0.25);
    let span = cfg.days * US_PER_DAY;
    let base_id = (b as i64 + 1) * 10_000_000;

    let customers: Vec<Customer> = (0..cfg.users)
        .map(|i| {
            let devices = (0..rng.random_range(1..=3))
                .map(|_| format!("d-{:012x}", rng.random::<u64>() >> 16))
                .collect();
            let mu = 3.2 + rng.random::<f64>() * 1.2;
            Customer {
                id: base_id + i as i64,
                devices,
                ips: (0..rng.random_range(1..=3))
                    .map(|_| ip(&mut rng, 10))
                    .collect(),
                amount: LogNormal::new(mu, 0.6).expect("valid log-normal"),
            }
        })
        .collect();
    // Zipf over activity ranks; a random permutation decides who is active.
    let mut by_rank: Vec<usize> = (0..cfg.users).collect();
    for i in (1..by_rank.len()).rev() {
        by_rank.swap(i, rng.random_range(0..=i));
    }
    let activity = Zipf::new(cfg.users as f64, 0.9).expect("valid zipf");
    let merchants = Zipf::new(2_000.0, 1.1).expect("valid zipf");
    let pick = |rng: &mut StdRng| by_rank[(activity.sample(rng) as usize - 1).min(cfg.users - 1)];

    let n_fraud_target = ((cfg.transactions as f64) * fraud_rate).round() as usize;
    let n_legit = cfg.transactions - n_fraud_target.min(cfg.transactions);
    let mut t = Txns::default();
    let mut l = Logins::default();
    for _ in 0..n_legit {
        let c = &customers[pick(&mut rng)];
        t.user.push(c.id);
        t.ts.push(cfg.start_us + rng.random_range(0..span));
        t.amount
            .push((c.amount.sample(&mut rng) * 100.0).round() / 100.0);
        t.merchant
            .push(format!("m-{:04}", merchants.sample(&mut rng) as u32));
        t.device
            .push(c.devices[rng.random_range(0..c.devices.len())].clone());
        t.ip.push(if rng.random::<f64>() < 0.97 {
            c.ips[rng.random_range(0..c.ips.len())].clone()
        } else {
            ip(&mut rng, 100)
        });
        t.fraud.push(false);
    }
    for _ in 0..cfg.transactions / 2 {
        let c = &customers[pick(&mut rng)];
        l.user.push(c.id);
        l.ts.push(cfg.start_us + rng.random_range(0..span));
        l.ip.push(if rng.random::<f64>() < 0.95 {
            c.ips[rng.random_range(0..c.ips.len())].clone()
        } else {
            ip(&mut rng, 100)
        });
        l.device
            .push(c.devices[rng.random_range(0..c.devices.len())].clone());
    }
    // Account takeovers: a login from a new IP, then a burst from a new device. Victims
    // follow the same activity distribution as everyone else.
    let mut fraud = 0;
    while fraud < n_fraud_target {
        let c = &customers[pick(&mut rng)];
        let start = cfg.start_us + rng.random_range(US_PER_DAY..span.max(US_PER_DAY + 1));
        let bad_ip = ip(&mut rng, 185);
        let bad_device = format!("d-{:012x}", rng.random::<u64>() >> 16);
        l.user.push(c.id);
        l.ts.push(start - rng.random_range(60..3_600) * US_PER_S);
        l.ip.push(bad_ip.clone());
        l.device.push(bad_device.clone());
        let burst = rng.random_range(3..=12).min(n_fraud_target - fraud);
        let mut at = start;
        for _ in 0..burst {
            t.user.push(c.id);
            t.ts.push(at.min(cfg.start_us + span - 1));
            t.amount.push(
                (c.amount.sample(&mut rng) * rng.random_range(2.0..6.0) * 100.0).round() / 100.0,
            );
            t.merchant
                .push(format!("m-{:04}", 1_900 + rng.random_range(0..100)));
            t.device.push(bad_device.clone());
            t.ip.push(bad_ip.clone());
            t.fraud.push(true);
            at += rng.random_range(30..1_800) * US_PER_S;
        }
        fraud += burst;
    }

    // Time order, as tables partitioned by day usually are.
    let mut order: Vec<usize> = (0..t.ts.len()).collect();
    order.sort_by_key(|&i| (t.ts[i], t.user[i]));
    let txn_schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
        Field::new("amount", DataType::Float64, false),
        Field::new("merchant_id", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("ip", DataType::Utf8, false),
        Field::new("is_fraud", DataType::Boolean, false),
    ]));
    let txn_batches: Vec<RecordBatch> = chunks(&order, 4)
        .map(|idx| {
            RecordBatch::try_new(
                txn_schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(idx.iter().map(|&i| t.user[i]))),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(idx.iter().map(|&i| t.ts[i]))
                            .with_timezone("UTC"),
                    ),
                    Arc::new(Float64Array::from_iter_values(
                        idx.iter().map(|&i| t.amount[i]),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        idx.iter().map(|&i| &t.merchant[i]),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        idx.iter().map(|&i| &t.device[i]),
                    )),
                    Arc::new(StringArray::from_iter_values(idx.iter().map(|&i| &t.ip[i]))),
                    Arc::new(BooleanArray::from_iter(
                        idx.iter().map(|&i| Some(t.fraud[i])),
                    )),
                ],
            )
        })
        .collect::<Result<_, _>>()?;
    write_table(&dir, "data/transactions", txn_batches).await?;

    let mut lorder: Vec<usize> = (0..l.ts.len()).collect();
    lorder.sort_by_key(|&i| (l.ts[i], l.user[i]));
    let login_schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
        Field::new("ip", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, false),
    ]));
    let login_batches: Vec<RecordBatch> = chunks(&lorder, 2)
        .map(|idx| {
            RecordBatch::try_new(
                login_schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(idx.iter().map(|&i| l.user[i]))),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(idx.iter().map(|&i| l.ts[i]))
                            .with_timezone("UTC"),
                    ),
                    Arc::new(StringArray::from_iter_values(idx.iter().map(|&i| &l.ip[i]))),
                    Arc::new(StringArray::from_iter_values(
                        idx.iter().map(|&i| &l.device[i]),
                    )),
                ],
            )
        })
        .collect::<Result<_, _>>()?;
    write_table(&dir, "data/logins", login_batches).await?;

    // Labels: every fraudulent transaction and one in ten legitimate ones, with the
    // time one second before the transaction (features as the bank saw them when it
    // had to decide).
    let mut lab_user = Vec::new();
    let mut lab_ts = Vec::new();
    let mut lab_y = Vec::new();
    for &i in &order {
        if t.fraud[i] || rng.random::<f64>() < 0.1 {
            lab_user.push(t.user[i]);
            lab_ts.push(t.ts[i] - US_PER_S);
            lab_y.push(t.fraud[i]);
        }
    }
    let labels = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("event_timestamp", ts_type(), false),
            Field::new("is_fraud", DataType::Boolean, false),
        ])),
        vec![
            Arc::new(Int64Array::from(lab_user)),
            Arc::new(TimestampMicrosecondArray::from(lab_ts).with_timezone("UTC")),
            Arc::new(BooleanArray::from(lab_y.clone())),
        ],
    )?;
    let file = std::fs::File::create(dir.join("labels.parquet"))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, labels.schema(), None)?;
    w.write(&labels)?;
    w.close()?;

    Ok(BankData {
        name,
        dir,
        transactions: t.ts.len(),
        fraud,
        logins: l.ts.len(),
        labels: lab_y.len(),
    })
}

fn chunks(order: &[usize], n: usize) -> impl Iterator<Item = &[usize]> {
    let size = order.len().div_ceil(n).max(1);
    order.chunks(size)
}

async fn write_table(dir: &Path, rel: &str, batches: Vec<RecordBatch>) -> Result<()> {
    let url = delta::table_url(dir, rel).map_err(anyhow::Error::msg)?;
    // One write (one commit) per batch keeps files of a useful size for parallel scans.
    for (i, b) in batches.into_iter().enumerate() {
        let mode = if i == 0 {
            SaveMode::Overwrite
        } else {
            SaveMode::Append
        };
        delta::write(&url, vec![b], mode).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bank_names() {
        assert_eq!(bank_name(0), "bank_a");
        assert_eq!(bank_name(2), "bank_c");
        assert_eq!(bank_name(26), "bank_aa");
    }
}
