//! The Rust client of `quiver serve` (Arrow Flight). Any Flight client works against
//! the server (see `docs/flight-protocol.md`); this one wraps the commands in typed
//! calls that return Arrow record batches.
//!
//! A whole round trip: a repo with one small Delta table, applied and materialized,
//! served on a free loopback port, and queried.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
//! use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
//! use quiver_featurestore::{FeatureStore, client::Client, delta, serve::{ServeConfig, Tokens}};
//!
//! // A feature repo: one entity, one Delta table, one view.
//! let repo = tempfile::tempdir()?;
//! std::fs::write(repo.path().join("features.yaml"), "
//! kind: Entity\nname: user\njoin_keys: [user_id]\n---
//! kind: Source\nname: payments\ndelta: data/payments\ntimestamp: ts\n---
//! kind: FeatureView\nname: spend\nentity: user\nsource: payments
//! features: [{ name: total, agg: sum(amount) }]\n")?;
//! let now = chrono::Utc::now().timestamp_micros();
//! let rows = RecordBatch::try_new(
//!     Arc::new(Schema::new(vec![
//!         Field::new("user_id", DataType::Int64, false),
//!         Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
//!         Field::new("amount", DataType::Float64, false),
//!     ])),
//!     vec![
//!         Arc::new(Int64Array::from(vec![1, 1, 2])),
//!         Arc::new(TimestampMicrosecondArray::from(vec![now - 2_000_000, now - 1_000_000, now - 1_000_000]).with_timezone("UTC")),
//!         Arc::new(Float64Array::from(vec![10.0, 5.0, 7.0])),
//!     ],
//! )?;
//! let table = delta::table_url(repo.path(), "data/payments").unwrap();
//! delta::write(&table, vec![rows], deltalake::protocol::SaveMode::Overwrite).await?;
//! let store = FeatureStore::open(repo.path())?;
//! store.apply().await?;
//! store.materialize().await?;
//!
//! // Serve it, and ask through the client.
//! let token = "a-long-random-secret-token";
//! let tokens = Tokens::new().with(token, "bank_a", false)?;
//! let server = ServeConfig::new("127.0.0.1:0".parse()?, tokens).spawn(store).await?;
//! let mut client = Client::connect(&format!("http://{}", server.addr())).await?.with_token(token)?;
//! let keys = RecordBatch::try_new(
//!     Arc::new(Schema::new(vec![Field::new("user_id", DataType::Int64, false)])),
//!     vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
//! )?;
//! let values = client.get_online_features("spend", None, &keys).await?;
//! println!("{}", arrow::util::pretty::pretty_format_batches(&[values.clone()])?);
//! let totals = values.column_by_name("total").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
//! assert_eq!((totals.value(0), totals.value(1), totals.is_null(2)), (15.0, 7.0, true));
//! server.shutdown().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightClient, FlightDescriptor, Ticket};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::catalog::FeatureField;
use crate::serve::Command;
use crate::{Error, Result};

impl From<FlightError> for Error {
    fn from(e: FlightError) -> Self {
        match e {
            FlightError::Tonic(s) => Error::Remote {
                code: format!("{:?}", s.code()),
                message: s.message().to_owned(),
            },
            other => Error::Remote {
                code: "Internal".into(),
                message: other.to_string(),
            },
        }
    }
}

/// One view as the server lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ViewSummary {
    /// View name.
    pub view: String,
    /// Applied version.
    pub version: u64,
    /// Entity.
    pub entity: String,
    /// Join key columns.
    pub keys: Vec<String>,
    /// Features and types.
    pub features: Vec<FeatureField>,
    /// Owner tenant.
    pub owner: Option<String>,
}

/// A connection to a feature server.
#[derive(Debug)]
pub struct Client {
    inner: FlightClient,
}

fn transport(e: tonic::transport::Error) -> Error {
    Error::Remote {
        code: "Unavailable".into(),
        message: format!("cannot connect: {e}"),
    }
}

impl Client {
    /// Connect to `url` (`http://host:port`, or `https://` with the system's roots).
    pub async fn connect(url: &str) -> Result<Self> {
        let endpoint =
            tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(transport)?;
        let channel = endpoint.connect().await.map_err(transport)?;
        Ok(Self {
            inner: FlightClient::new(channel),
        })
    }

    /// Connect over TLS, trusting the CA certificate `ca_pem` (PEM).
    pub async fn connect_tls(url: &str, ca_pem: &[u8], domain: &str) -> Result<Self> {
        crate::serve::ensure_crypto_provider();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .domain_name(domain);
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(transport)?
            .tls_config(tls)
            .map_err(transport)?;
        let channel = endpoint.connect().await.map_err(transport)?;
        Ok(Self {
            inner: FlightClient::new(channel),
        })
    }

    /// Send `token` as `authorization: Bearer <token>` with every call.
    pub fn with_token(mut self, token: &str) -> Result<Self> {
        self.inner
            .add_header("authorization", &format!("Bearer {token}"))?;
        Ok(self)
    }

    /// Online values of `features` (all when `None`) of `view` for the keys in `keys`
    /// (a batch with the view's join key columns, integers or strings).
    pub async fn get_online_features(
        &mut self,
        view: &str,
        features: Option<&[&str]>,
        keys: &RecordBatch,
    ) -> Result<RecordBatch> {
        let cols = json_columns(keys)?;
        let cmd = Command::Online {
            view: view.to_owned(),
            features: features.map(|f| f.iter().map(|s| s.to_string()).collect()),
            keys: cols,
        };
        let batches: Vec<RecordBatch> = self
            .inner
            .do_get(Ticket::new(cmd.encode()))
            .await?
            .try_collect()
            .await?;
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => {
                return Err(Error::Remote {
                    code: "Internal".into(),
                    message: "the server sent no batch".into(),
                });
            }
        };
        if batches.len() == 1 {
            return Ok(batches.into_iter().next().expect("one batch"));
        }
        Ok(arrow::compute::concat_batches(&schema, &batches)?)
    }

    /// Score `keys` with registered `model`: the server fetches the online features the
    /// model takes and scores them with its champion (or, for the canary share of keys,
    /// its challenger) in one round trip. Columns: the keys, `score`, `model_version`,
    /// `model_alias`, and with `explain` `contributions` (JSON per row).
    pub async fn score(
        &mut self,
        model: &str,
        keys: &RecordBatch,
        explain: bool,
    ) -> Result<RecordBatch> {
        let cols = json_columns(keys)?;
        let cmd = Command::Score {
            model: model.to_owned(),
            keys: cols,
            explain,
        };
        let mut batches: Vec<RecordBatch> = self
            .inner
            .do_get(Ticket::new(cmd.encode()))
            .await?
            .try_collect()
            .await?;
        match batches.len() {
            1 => Ok(batches.remove(0)),
            0 => Err(Error::Remote {
                code: "Internal".into(),
                message: "the server sent no batch".into(),
            }),
            _ => Ok(arrow::compute::concat_batches(
                &batches[0].schema(),
                &batches,
            )?),
        }
    }

    /// Online values for key batches of any size, streamed with DoExchange.
    pub async fn exchange_online_features(
        &mut self,
        view: &str,
        features: Option<&[&str]>,
        keys: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        let cmd = Command::Exchange {
            view: view.to_owned(),
            features: features.map(|f| f.iter().map(|s| s.to_string()).collect()),
        };
        let input = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.encode())))
            .build(futures::stream::iter(keys.into_iter().map(Ok)));
        Ok(self.inner.do_exchange(input).await?.try_collect().await?)
    }

    /// A point-in-time training set: uploads `entities` (keys + `event_timestamp`)
    /// with DoPut, then reads the result with DoGet.
    pub async fn get_historical_features(
        &mut self,
        entities: Vec<RecordBatch>,
        features: &[&str],
        full_names: bool,
    ) -> Result<Vec<RecordBatch>> {
        let upload = self.upload(entities).await?;
        let cmd = Command::Historical {
            features: features.iter().map(|s| s.to_string()).collect(),
            upload: Some(upload),
            rows: None,
            full_names,
        };
        Ok(self
            .inner
            .do_get(Ticket::new(cmd.encode()))
            .await?
            .try_collect()
            .await?)
    }

    /// Upload an entity table; returns its id for `historical` commands.
    pub async fn upload(&mut self, entities: Vec<RecordBatch>) -> Result<String> {
        let input = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_cmd(Command::Upload {}.encode())))
            .build(futures::stream::iter(entities.into_iter().map(Ok)));
        let mut results = self.inner.do_put(input).await?;
        let first = results.next().await.ok_or_else(|| Error::Remote {
            code: "Internal".into(),
            message: "no upload result".into(),
        })??;
        let meta: Json =
            serde_json::from_slice(&first.app_metadata).map_err(|e| Error::Remote {
                code: "Internal".into(),
                message: e.to_string(),
            })?;
        meta["upload"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Remote {
                code: "Internal".into(),
                message: "upload result without id".into(),
            })
    }

    /// The rows a view reads from its source, at a Delta version (default latest).
    pub async fn scan(
        &mut self,
        view: &str,
        delta_version: Option<i64>,
    ) -> Result<Vec<RecordBatch>> {
        let cmd = Command::Scan {
            view: view.to_owned(),
            delta_version,
        };
        Ok(self
            .inner
            .do_get(Ticket::new(cmd.encode()))
            .await?
            .try_collect()
            .await?)
    }

    /// Run an action; returns its JSON answer.
    pub async fn action(&mut self, name: &str, body: Json) -> Result<Json> {
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).unwrap_or_default()
        };
        let answers: Vec<bytes::Bytes> = self
            .inner
            .do_action(Action::new(name, body))
            .await?
            .try_collect()
            .await?;
        let first = answers.first().ok_or_else(|| Error::Remote {
            code: "Internal".into(),
            message: format!("action `{name}` answered nothing"),
        })?;
        serde_json::from_slice(first).map_err(|e| Error::Remote {
            code: "Internal".into(),
            message: e.to_string(),
        })
    }

    /// Views the caller may read.
    pub async fn list_views(&mut self) -> Result<Vec<ViewSummary>> {
        let answer = self.action("list", Json::Null).await?;
        serde_json::from_value(answer["views"].clone()).map_err(|e| Error::Remote {
            code: "Internal".into(),
            message: e.to_string(),
        })
    }

    /// Materialize `views` (all when `None`) up to `until` (RFC 3339; default now).
    pub async fn materialize(
        &mut self,
        views: Option<&[&str]>,
        until: Option<&str>,
    ) -> Result<Json> {
        let body = quiver_flight_proto::actions::Materialize {
            views: views.map(|v| v.iter().map(|s| (*s).to_owned()).collect()),
            until: until.map(str::to_owned),
            full: false,
        };
        self.action("materialize", serde_json::json!(body)).await
    }

    /// Apply the server's feature repo.
    pub async fn apply(&mut self) -> Result<Json> {
        self.action("apply", Json::Null).await
    }

    /// The underlying Flight client, for calls this wrapper does not cover.
    pub fn flight(&mut self) -> &mut FlightClient {
        &mut self.inner
    }
}

/// Every column of `keys` as JSON values, by name (what commands carry).
fn json_columns(keys: &RecordBatch) -> Result<BTreeMap<String, Vec<Json>>> {
    keys.schema()
        .fields()
        .iter()
        .zip(keys.columns())
        .map(|(f, col)| Ok((f.name().clone(), json_column(f.name(), col)?)))
        .collect()
}

/// A key column as JSON values (integers or strings).
fn json_column(name: &str, col: &dyn Array) -> Result<Vec<Json>> {
    let out = match col.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => {
            let c =
                arrow::compute::cast(&arrow::array::make_array(col.to_data()), &DataType::Int64)?;
            let c = c.as_primitive::<Int64Type>();
            (0..c.len())
                .map(|i| {
                    if c.is_null(i) {
                        Json::Null
                    } else {
                        Json::from(c.value(i))
                    }
                })
                .collect()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let c =
                arrow::compute::cast(&arrow::array::make_array(col.to_data()), &DataType::Utf8)?;
            let c = c.as_string::<i32>();
            (0..c.len())
                .map(|i| {
                    if c.is_null(i) {
                        Json::Null
                    } else {
                        Json::from(c.value(i))
                    }
                })
                .collect()
        }
        other => {
            return Err(Error::InvalidRequest(format!(
                "key column `{name}` is {other}; keys are integers or strings"
            )));
        }
    };
    Ok(out)
}
