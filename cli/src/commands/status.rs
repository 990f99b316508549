//! `dvd status`: the gateway's cluster view (`GET /v1/cluster`) as a table: every vision and
//! language server with its health, load, queue, cache hit rate, answers per second, errors in
//! the last minute and restarts; once, or refreshed until Ctrl-C with `--watch`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use dvd_bench::serve::client::{Endpoint, get_json};
use dvd_gateway::cluster::{ClusterView, MemberView};

/// Options of `dvd status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The gateway's base URL.
    #[arg(long, default_value_t = super::gateway::default_url())]
    url: String,
    /// Refresh until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes with `--watch`.
    #[arg(long, default_value_t = 2.0)]
    interval_s: f64,
    /// Print the view as JSON (one line per refresh) instead of a table.
    #[arg(long)]
    json: bool,
    /// API key, when the gateway requires one.
    #[arg(long, env = "DVD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl StatusArgs {
    /// Prints the view once, or on every refresh with `--watch`.
    pub fn run(self) -> Result<()> {
        anyhow::ensure!(
            self.interval_s.is_finite() && self.interval_s > 0.0,
            "--interval-s must be a positive number of seconds"
        );
        let endpoint = Endpoint::parse(&self.url)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            if !self.watch {
                let view = self.fetch(&endpoint).await?;
                print!("{}", self.render(&view)?);
                return Ok(());
            }
            let stop = super::wait_for_signal();
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(self.interval_s));
            loop {
                tokio::select! {
                    r = &mut stop => return r,
                    _ = tick.tick() => {
                        // A gateway that stops answering is shown, not fatal: it may come back.
                        let shown = match self.fetch(&endpoint).await {
                            Ok(view) => self.render(&view)?,
                            Err(e) => format!("{e:#}\n"),
                        };
                        if !self.json {
                            // Clear the screen, cursor home.
                            println!("\x1b[2J\x1b[H{}", self.url);
                        }
                        print!("{shown}");
                    }
                }
            }
        })
    }

    async fn fetch(&self, endpoint: &Endpoint) -> Result<ClusterView> {
        let value = get_json(endpoint, "/v1/cluster", self.api_key.as_deref())
            .await
            .with_context(|| format!("asking {} for its cluster view", self.url))?;
        serde_json::from_value(value).context("the cluster view has an unexpected shape")
    }

    fn render(&self, view: &ClusterView) -> Result<String> {
        Ok(match self.json {
            true => serde_json::to_string(view)? + "\n",
            false => table(view),
        })
    }
}

/// The view as an aligned table, vision servers first.
pub fn table(view: &ClusterView) -> String {
    let header = [
        "pool", "address", "healthy", "load", "queue", "cache", "req/s", "err/min", "restarts",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    for (pool, members) in [("vision", &view.vision), ("language", &view.language)] {
        if members.is_empty() {
            rows.push(vec![pool.into(), "(none)".into()]);
        }
        rows.extend(members.iter().map(|m| row(pool, m)));
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(text, "{}", cells.join("  ").trim_end());
    }
    text
}

fn row(pool: &str, m: &MemberView) -> Vec<String> {
    vec![
        pool.into(),
        m.address.clone(),
        if m.healthy { "yes" } else { "NO" }.into(),
        m.load.to_string(),
        m.queue.to_string(),
        format!("{:.0}%", m.cache_hit_rate * 100.0),
        format!("{:.2}", m.throughput),
        m.errors_last_minute.to_string(),
        m.restarts.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(address: &str, healthy: bool, restarts: u32) -> MemberView {
        MemberView {
            address: address.into(),
            healthy,
            load: 1200,
            queue: 3,
            cache_hit_rate: 0.256,
            throughput: 1.5,
            errors_last_minute: 2,
            restarts,
        }
    }

    #[test]
    fn the_table_aligns_every_member_under_its_pool() {
        let view = ClusterView {
            vision: vec![
                member("127.0.0.1:40001", true, 0),
                member("127.0.0.1:40002", false, 1),
            ],
            language: Vec::new(),
        };
        assert_eq!(
            table(&view),
            "pool      address          healthy  load  queue  cache  req/s  err/min  restarts\n\
             vision    127.0.0.1:40001  yes      1200  3      26%    1.50   2        0\n\
             vision    127.0.0.1:40002  NO       1200  3      26%    1.50   2        1\n\
             language  (none)\n"
        );
    }
}
