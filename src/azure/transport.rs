//! How kmsctl reaches Azure. In production azure_core builds its own HTTP client. With
//! `KMSCTL_AZURE_ROUTE=host:port` every Azure host name (management.azure.com,
//! login.microsoftonline.com, <vault>.vault.azure.net) resolves to that address and
//! `KMSCTL_CA_FILE` is the trusted CA: URLs, TLS verification and SDK code paths stay the real ones.

use anyhow::Context;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

struct RouteResolver(SocketAddr);

impl reqwest::dns::Resolve for RouteResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = self.0;
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
    }
}

#[derive(Clone, Debug, Default)]
pub struct Route {
    pub address: Option<SocketAddr>,
    pub ca_pem: Option<Vec<u8>>,
}

impl Route {
    pub fn from_env() -> anyhow::Result<Route> {
        let address = match std::env::var("KMSCTL_AZURE_ROUTE") {
            Ok(a) if !a.is_empty() => Some(
                a.parse()
                    .with_context(|| format!("KMSCTL_AZURE_ROUTE '{a}' is not host:port"))?,
            ),
            _ => None,
        };
        let ca_pem = match std::env::var("KMSCTL_CA_FILE") {
            Ok(p) if !p.is_empty() => {
                Some(std::fs::read(&p).with_context(|| format!("reading KMSCTL_CA_FILE {p}"))?)
            }
            _ => None,
        };
        Ok(Route { address, ca_pem })
    }

    /// The HTTP client, or None to let azure_core build its default one.
    pub fn http_client(&self) -> anyhow::Result<Option<reqwest::Client>> {
        if self.address.is_none() && self.ca_pem.is_none() {
            return Ok(None);
        }
        // Mirrors azure_core's own client: no redirects, bounded connect and read times.
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(120));
        if let Some(pem) = &self.ca_pem {
            b = b.tls_certs_merge([reqwest::Certificate::from_pem(pem)
                .context("KMSCTL_CA_FILE is not a PEM certificate")?]);
        }
        if let Some(addr) = self.address {
            b = b.dns_resolver(Arc::new(RouteResolver(addr)));
        }
        Ok(Some(b.build()?))
    }

    /// Client options for every Azure client. Retries are ours (crate::retry), not the pipeline's.
    pub fn client_options(&self) -> anyhow::Result<ClientOptions> {
        let transport = self.http_client()?.map(|c| Transport::new(Arc::new(c)));
        Ok(ClientOptions {
            transport,
            retry: RetryOptions::none(),
            ..Default::default()
        })
    }
}
