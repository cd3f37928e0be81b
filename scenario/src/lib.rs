//! Scenarios (`scenario-format.md`): a catalog, accounts and a timed list of commands. This
//! crate reads them strictly and drives an engine with them.

mod parse;

pub use parse::{command, parse, parse_policy_file, AccountSpec, Scenario, ScenarioError, Step};

use poolbill_domain::{Command, Policy};
use poolbill_engine::{Engine, EngineError, Executed};

/// Run a scenario on an engine: set up the catalog, policy and accounts at the first instant,
/// run each command at its `at` (the clock passes it first), then let the clock pass `until`.
///
/// Every command has a stable id (`<name>:<index>`, setup `<name>:account:<id>` …), so running
/// the same scenario again on a kept store appends nothing twice.
pub async fn run(engine: &Engine, scenario: &Scenario) -> Result<Vec<(usize, Executed)>, EngineError> {
    let start = scenario.commands.first().map_or(scenario.until, |s| s.at.min(scenario.until));
    let name = &scenario.name;
    // The default policy is in force already: setting it again would be refused (R17).
    if let Some(policy) = scenario.policy.as_ref().filter(|p| **p != Policy::default()) {
        engine.execute(format!("{name}:policy"), start, Command::SetPolicy { policy: policy.clone() }, None).await?;
    }
    for (spec, price) in &scenario.catalog {
        let command = Command::SetPrice { spec: spec.clone(), price: price.clone() };
        engine.execute(format!("{name}:price:{spec}"), start, command, None).await?;
    }
    for account in &scenario.accounts {
        let command =
            Command::OpenAccount { account: account.id.clone(), balance: account.balance, level: account.level.clone(), discount: account.discount };
        engine.execute(format!("{name}:account:{}", account.id), start, command, None).await?;
    }
    let mut results = Vec::with_capacity(scenario.commands.len());
    for step in &scenario.commands {
        let executed = engine.execute(format!("{name}:{}", step.index), step.at, step.command.clone(), Some(step.index as u64)).await?;
        results.push((step.index, executed));
    }
    engine.advance_to(scenario.until).await?;
    Ok(results)
}
