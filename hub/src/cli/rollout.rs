//! `skiff-hub rollout …`: a channel's staged rollout, and the operator's levers on it.

use clap::Subcommand;
use reqwest::Method;

use super::{HubArgs, Output};
use crate::rollout::RolloutStatus;

/// `skiff-hub rollout …`
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show each channel's rollout (or one's): step, clusters done of those reached, behind,
    /// failed (with why), held, waiting for their maintenance window.
    Status {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Only this channel.
        channel: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Stop moving the rollout (pins stay where they are) until `resume`.
    Pause {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// The channel.
        channel: String,
    },
    /// Move a paused or halted rollout again (a halted one halts again while its step is
    /// still beyond its failure budget).
    Resume {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// The channel.
        channel: String,
    },
    /// End the current step's soak now: the next step starts as soon as this one is done.
    Promote {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// The channel.
        channel: String,
    },
    /// Stop the rollout for good: every cluster keeps the generation it was given, nothing
    /// more moves. To roll back, publish the old content as a new commit (a new, higher
    /// generation: agents never go back a generation); it rolls out through the plan.
    Abort {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// The channel.
        channel: String,
    },
}

/// One line per rollout, for `status` and `rollout status`.
pub(super) fn print(rollouts: &[RolloutStatus]) {
    for r in rollouts {
        let c = &r.counts;
        println!(
            "rollout {}: generation {} {} — step {}/{} ({}), {} of {} reached done, {} progressing, {} behind, {} failed, {} held, {} waiting for window, {} offline{}",
            r.channel,
            r.generation,
            r.phase,
            r.step,
            r.steps,
            r.step_name.as_deref().unwrap_or("-"),
            c.done,
            r.reached,
            c.progressing,
            r.behind,
            c.failed,
            c.held,
            c.waiting,
            c.offline,
            if r.reached < r.total {
                format!("; {} not reached yet", r.total - r.reached)
            } else {
                String::new()
            }
        );
        if let Some(t) = r.soak_ends {
            println!("  soaking until {t}");
        }
        if let Some(why) = &r.reason {
            println!("  {why}");
        }
        for f in &r.failed {
            println!("  failed: {f}");
        }
        if !r.behind_clusters.is_empty() {
            println!("  behind: {}", r.behind_clusters.join(", "));
        }
    }
}

pub(super) async fn run(command: RolloutCommand) -> anyhow::Result<()> {
    let (hub, channel, verb) = match command {
        RolloutCommand::Status { hub, channel, output } => {
            let all: Vec<RolloutStatus> = hub
                .client()?
                .json(Method::GET, "/v1/admin/rollouts", None)
                .await?;
            let shown: Vec<RolloutStatus> = all
                .into_iter()
                .filter(|r| channel.as_deref().is_none_or(|c| c == r.channel))
                .collect();
            if let Some(c) = &channel
                && shown.is_empty()
            {
                anyhow::bail!("channel {c:?} has no rollout (no rollout plan, or no such channel)");
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&shown)?),
                Output::Text if shown.is_empty() => println!("no channel has a rollout plan"),
                Output::Text => print(&shown),
            }
            return Ok(());
        }
        RolloutCommand::Pause { hub, channel } => (hub, channel, "pause"),
        RolloutCommand::Resume { hub, channel } => (hub, channel, "resume"),
        RolloutCommand::Promote { hub, channel } => (hub, channel, "promote"),
        RolloutCommand::Abort { hub, channel } => (hub, channel, "abort"),
    };
    let status: RolloutStatus = hub
        .client()?
        .json(
            Method::POST,
            &format!("/v1/admin/rollouts/{channel}/{verb}"),
            None,
        )
        .await?;
    print(&[status]);
    Ok(())
}
