//! Where a training set is computed: this process (DataFusion, the default) or an
//! Apache DataFusion Ballista cluster (docs/scale-out.md).

use crate::{Error, Result};

/// A compute engine for training sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Engine {
    /// DataFusion in this process.
    #[default]
    Local,
    /// A Ballista scheduler at `host:port`, whose executors run quiver's plan nodes
    /// (the `quiver-ballista-scheduler` and `quiver-ballista-executor` binaries).
    Ballista {
        /// Host and port of the scheduler.
        scheduler: String,
        /// Mutual TLS to the cluster ([`Engine::with_tls`]); without it, only a
        /// scheduler on this machine is reached (docs/ballista-tls.md).
        #[cfg(feature = "ballista")]
        tls: Option<super::tls::ClusterTls>,
    },
}

impl Engine {
    /// `local`, or `ballista://HOST:PORT`.
    ///
    /// ```
    /// use quiver_featurestore::offline::Engine;
    /// assert_eq!(Engine::parse("local").unwrap(), Engine::Local);
    /// assert!(matches!(
    ///     Engine::parse("ballista://10.0.0.5:50050").unwrap(),
    ///     Engine::Ballista { scheduler, .. } if scheduler == "10.0.0.5:50050"
    /// ));
    /// assert!(Engine::parse("spark://x:1").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        if text == "local" {
            return Ok(Engine::Local);
        }
        let bad = || {
            Error::InvalidRequest(format!(
                "engine `{text}`: expected `local` or `ballista://HOST:PORT`"
            ))
        };
        let rest = text.strip_prefix("ballista://").ok_or_else(bad)?;
        let url = url::Url::parse(&format!("http://{rest}")).map_err(|_| bad())?;
        match (url.host_str(), url.port(), url.path()) {
            (Some(h), Some(p), "/" | "") if !h.is_empty() => Ok(Engine::Ballista {
                scheduler: format!("{h}:{p}"),
                #[cfg(feature = "ballista")]
                tls: None,
            }),
            _ => Err(bad()),
        }
    }

    /// This engine with every connection to the cluster made over mutual TLS with
    /// `tls` (a local engine is returned unchanged).
    #[cfg(feature = "ballista")]
    pub fn with_tls(self, tls: super::tls::ClusterTls) -> Self {
        match self {
            Engine::Ballista { scheduler, .. } => Engine::Ballista {
                scheduler,
                tls: Some(tls),
            },
            local => local,
        }
    }

    /// A session whose queries run on this engine, with `config`.
    pub(crate) async fn session(
        &self,
        config: datafusion::prelude::SessionConfig,
    ) -> Result<datafusion::prelude::SessionContext> {
        match self {
            Engine::Local => Ok(crate::plan::session_with_config(config)),
            #[cfg(feature = "ballista")]
            Engine::Ballista { scheduler, tls } => {
                use ballista::prelude::{SessionConfigExt, SessionContextExt};
                use datafusion::execution::session_state::SessionStateBuilder;
                use std::sync::Arc;
                let host = scheduler.rsplit_once(':').map_or(scheduler.as_str(), |(h, _)| h);
                if tls.is_none() && !super::tls::is_loopback_host(host) {
                    return Err(Error::InvalidRequest(format!(
                        "engine ballista://{scheduler}: a cluster on another machine is reached \
                         only over mutual TLS; give its CA and this client's certificate and key \
                         (--engine-tls-ca, --engine-tls-cert, --engine-tls-key; docs/ballista-tls.md)"
                    )));
                }
                let config = config
                    .upgrade_for_ballista()
                    .with_ballista_logical_extension_codec(Arc::new(
                        ballista_codecs::Logical::default(),
                    ))
                    .with_ballista_physical_extension_codec(Arc::new(
                        ballista_codecs::Physical::default(),
                    ));
                let config = match tls {
                    Some(tls) => tls.apply(config),
                    // A loopback scheduler could name executors elsewhere: refused.
                    None => config.with_ballista_override_create_grpc_client_endpoint(
                        super::tls::loopback_only(),
                    ),
                };
                let state = SessionStateBuilder::new()
                    .with_config(config)
                    .with_default_features()
                    .build();
                Ok(datafusion::prelude::SessionContext::remote_with_state(
                    &format!("df://{scheduler}"),
                    state,
                )
                .await?)
            }
            #[cfg(not(feature = "ballista"))]
            Engine::Ballista { .. } => Err(Error::InvalidRequest(
                "this build of quiver has no Ballista client; build it with the cargo feature `ballista`".into(),
            )),
        }
    }
}

/// quiver's codecs composed with Ballista's: quiver's nodes, tables and UDFs first
/// (their bytes marked), everything else (shuffle readers and writers, file formats)
/// Ballista's. Client, scheduler and executors must all use these.
#[cfg(feature = "ballista")]
pub mod ballista_codecs {
    use std::sync::Arc;

    use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
    use datafusion::catalog::TableProvider;
    use datafusion::common::{DataFusionError, Result, TableReference};
    use datafusion::execution::TaskContext;
    use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion_proto::logical_plan::LogicalExtensionCodec;
    use datafusion_proto::physical_plan::{
        PhysicalExtensionCodec, PhysicalProtoConverterExtension,
    };

    use crate::plan::portable::{QuiverCodec, QuiverLogicalCodec};

    /// What starts the bytes quiver's codec wrote.
    const MARK: &[u8] = b"quiver:";

    fn marked(buf: &[u8]) -> Option<&[u8]> {
        buf.strip_prefix(MARK)
    }

    /// A WebAssembly UDF as quiver writes it (marked), anything else as Ballista does.
    fn encode_udf(
        node: &ScalarUDF,
        buf: &mut Vec<u8>,
        ballista: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let mut mine = Vec::new();
        crate::plan::portable::encode_udf(node, &mut mine)?;
        if mine.is_empty() {
            return ballista(buf);
        }
        buf.extend_from_slice(MARK);
        buf.extend_from_slice(&mine);
        Ok(())
    }

    /// quiver's decoding for marked bytes and for functions sent by name (DataFusion's
    /// built-ins, nested ones included, which Ballista's executors lack); Ballista's
    /// for the rest.
    fn decode_udf(
        name: &str,
        buf: &[u8],
        ballista: impl FnOnce(&[u8]) -> Result<Arc<ScalarUDF>>,
    ) -> Result<Arc<ScalarUDF>> {
        match marked(buf) {
            Some(b) => crate::plan::portable::decode_udf(name, b),
            None if buf.is_empty() => {
                crate::plan::portable::decode_udf(name, buf).or_else(|_| ballista(buf))
            }
            None => ballista(buf),
        }
    }

    /// Try quiver's encoder into a scratch buffer: `true` (and the marked bytes in
    /// `buf`) when quiver owns the thing encoded.
    fn ours(buf: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<bool> {
        let mut mine = Vec::new();
        match encode(&mut mine) {
            Ok(()) => {
                buf.extend_from_slice(MARK);
                buf.extend_from_slice(&mine);
                Ok(true)
            }
            Err(DataFusionError::NotImplemented(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The physical codec.
    #[derive(Debug, Default)]
    pub struct Physical {
        ballista: BallistaPhysicalExtensionCodec,
    }

    impl PhysicalExtensionCodec for Physical {
        fn try_decode(
            &self,
            buf: &[u8],
            inputs: &[Arc<dyn ExecutionPlan>],
            ctx: &TaskContext,
            converter: &dyn PhysicalProtoConverterExtension,
        ) -> Result<Arc<dyn ExecutionPlan>> {
            match marked(buf) {
                Some(b) => QuiverCodec.try_decode(b, inputs, ctx, converter),
                None => self.ballista.try_decode(buf, inputs, ctx, converter),
            }
        }

        fn try_encode(
            &self,
            node: Arc<dyn ExecutionPlan>,
            buf: &mut Vec<u8>,
            converter: &dyn PhysicalProtoConverterExtension,
        ) -> Result<()> {
            if ours(buf, |b| QuiverCodec.try_encode(node.clone(), b, converter))? {
                return Ok(());
            }
            self.ballista.try_encode(node, buf, converter)
        }

        fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
            decode_udf(name, buf, |b| self.ballista.try_decode_udf(name, b))
        }

        fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
            encode_udf(node, buf, |b| self.ballista.try_encode_udf(node, b))
        }
    }

    /// The logical codec.
    #[derive(Debug, Default)]
    pub struct Logical {
        ballista: BallistaLogicalExtensionCodec,
    }

    impl LogicalExtensionCodec for Logical {
        fn try_decode(
            &self,
            buf: &[u8],
            inputs: &[LogicalPlan],
            ctx: &TaskContext,
        ) -> Result<Extension> {
            match marked(buf) {
                Some(b) => QuiverLogicalCodec.try_decode(b, inputs, ctx),
                None => self.ballista.try_decode(buf, inputs, ctx),
            }
        }

        fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
            if ours(buf, |b| QuiverLogicalCodec.try_encode(node, b))? {
                return Ok(());
            }
            self.ballista.try_encode(node, buf)
        }

        fn try_decode_table_provider(
            &self,
            buf: &[u8],
            table_ref: &TableReference,
            schema: arrow::datatypes::SchemaRef,
            ctx: &TaskContext,
        ) -> Result<Arc<dyn TableProvider>> {
            match marked(buf) {
                Some(b) => QuiverLogicalCodec.try_decode_table_provider(b, table_ref, schema, ctx),
                None => self
                    .ballista
                    .try_decode_table_provider(buf, table_ref, schema, ctx),
            }
        }

        fn try_encode_table_provider(
            &self,
            table_ref: &TableReference,
            node: Arc<dyn TableProvider>,
            buf: &mut Vec<u8>,
        ) -> Result<()> {
            if ours(buf, |b| {
                QuiverLogicalCodec.try_encode_table_provider(table_ref, node.clone(), b)
            })? {
                return Ok(());
            }
            self.ballista
                .try_encode_table_provider(table_ref, node, buf)
        }

        fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
            decode_udf(name, buf, |b| self.ballista.try_decode_udf(name, b))
        }

        fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
            encode_udf(node, buf, |b| self.ballista.try_encode_udf(node, b))
        }
    }
}
