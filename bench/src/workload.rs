//! Seeded workloads: a scenario (`scenario-format.md`) shaped like a region's history, from a
//! handful of parameters and a seed. Pure: the same parameters and seed give the same bytes.

use chrono::{DateTime, Duration, FixedOffset, SecondsFormat};
use serde_json::{json, Value};

/// The dedicated-pool spec every pool starts on.
pub const SPEC: &str = "modelarts.vm.cpu.8ud";
/// A second dedicated spec (the `mix` preset moves some pools to it and back).
pub const GPU_SPEC: &str = "modelarts.vm.gpu.p4";
/// The public pool's spec: jobs without a pool and packages run on it.
pub const PUBLIC_SPEC: &str = "modelarts.vm.cpu.8u.public";

/// splitmix64: a tiny, well-mixed, deterministic generator (enough for shaping a workload).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// What a workload holds. Pool `i` belongs to account `i % accounts`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    pub name: String,
    pub seed: u64,
    /// First instant (RFC 3339, Beijing): pools are bought during the first day.
    pub start: String,
    pub days: u32,
    pub pools: u32,
    pub accounts: u32,
    /// Every `subscription_every`-th pool (i % n == n - 1) is a subscription, the rest are
    /// pay-per-use (on-demand, `"ready": true`). 0: none.
    pub subscription_every: u32,
    /// Every `yearly_every`-th subscription is yearly, the others monthly. 0: none.
    pub yearly_every: u32,
    /// Subscriptions turn auto-renewal on right after the purchase (long histories).
    pub auto_renew: bool,
    /// Each day, every `scale_every`-th pool (i % n == 0) is scaled once (1 ↔ 2 nodes). 0: none.
    pub scale_every: u32,
    /// Scaling sometimes changes the spec too (`mix`).
    pub scale_spec: bool,
    /// Training jobs on the public pool started per day (each runs 1–6 h, then is deleted).
    pub jobs_per_day: u32,
    /// Notebooks with an EVS disk per account: started on day 0, stopped every evening and
    /// restarted every morning.
    pub notebooks_per_account: u32,
    /// Every `package_every_days` days each account buys a package of public-pool node-hours. 0: none.
    pub package_every_days: u32,
    /// Every `top_up_every_days` days each account tops up. 0: none.
    pub top_up_every_days: u32,
    /// Opening balance of each account: enough that nobody falls into arrears.
    pub balance: String,
}

impl Params {
    /// A named preset: `small` (seconds, every command type the bench uses), `region` (the
    /// issue's workload), `mix` (region plus jobs, notebooks, packages, yearly subscriptions,
    /// auto-renewal and top-ups), `10m` (region's pools over 540 days: about 10 million events).
    pub fn preset(name: &str, seed: u64) -> Option<Params> {
        let region = Params {
            name: "region".into(),
            seed,
            start: "2023-04-01T00:00:00+08:00".into(),
            days: 30,
            pools: 1000,
            accounts: 20,
            subscription_every: 4,
            yearly_every: 0,
            auto_renew: false,
            scale_every: 10,
            scale_spec: false,
            jobs_per_day: 0,
            notebooks_per_account: 0,
            package_every_days: 0,
            top_up_every_days: 0,
            balance: "100000000.00".into(),
        };
        let p = match name {
            "region" => region,
            "mix" => Params {
                name: "mix".into(),
                yearly_every: 3,
                auto_renew: true,
                // Every fifth pool: some of them subscriptions (upgrades and downgrades).
                scale_every: 5,
                scale_spec: true,
                jobs_per_day: 200,
                notebooks_per_account: 2,
                package_every_days: 10,
                top_up_every_days: 1,
                ..region
            },
            "10m" => Params { name: "10m".into(), days: 540, auto_renew: true, ..region },
            "small" => Params {
                name: "small".into(),
                days: 3,
                pools: 24,
                accounts: 4,
                yearly_every: 2,
                auto_renew: true,
                scale_every: 3,
                scale_spec: true,
                jobs_per_day: 4,
                notebooks_per_account: 1,
                package_every_days: 2,
                top_up_every_days: 1,
                ..region
            },
            _ => return None,
        };
        Some(p)
    }

    pub fn start(&self) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(&self.start).expect("the start is RFC 3339")
    }

    pub fn until(&self) -> DateTime<FixedOffset> {
        self.start() + Duration::days(self.days as i64)
    }

    /// The middle of the history, off the hour (a time-travel target).
    pub fn mid(&self) -> DateTime<FixedOffset> {
        self.start() + Duration::seconds(self.days as i64 * 86_400 / 2 + 1_234)
    }

    pub fn is_subscription(&self, pool: u32) -> bool {
        self.subscription_every > 0 && pool % self.subscription_every == self.subscription_every - 1
    }

    pub fn pay_per_use_pools(&self) -> u64 {
        (0..self.pools).filter(|&i| !self.is_subscription(i)).count() as u64
    }

    /// About how many events the workload appends: one `charged` line per pay-per-use pool
    /// and job per hour, one `cycle_settled` per account per hour, and a few per command.
    pub fn expected_events(&self) -> u64 {
        let hours = self.days as u64 * 24;
        let metered = self.pay_per_use_pools() + self.notebooks_per_account as u64 * self.accounts as u64 * 2;
        let jobs = self.jobs_per_day as u64 * self.days as u64 * 4;
        metered * hours + jobs + self.accounts as u64 * hours + self.commands_estimate() * 3
    }

    fn commands_estimate(&self) -> u64 {
        let scales = if self.scale_every == 0 { 0 } else { (self.pools as u64).div_ceil(self.scale_every as u64) * self.days as u64 };
        self.pools as u64 + scales + self.jobs_per_day as u64 * self.days as u64 * 2
    }
}

fn at(t: DateTime<FixedOffset>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}

pub fn pool_id(i: u32) -> String {
    format!("p{i}")
}

pub fn account_id(i: u32) -> String {
    format!("a{i}")
}

/// The scenario, as the JSON value `poolbill run` reads.
pub fn generate(p: &Params) -> Value {
    let mut rng = Rng::new(p.seed);
    let start = p.start();
    let until = p.until();
    let day = |d: u32| start + Duration::days(d as i64);
    // (instant, order of creation, command): sorted by instant, ties in creation order.
    let mut commands: Vec<(DateTime<FixedOffset>, usize, Value)> = Vec::new();
    let mut push = |t: DateTime<FixedOffset>, mut c: Value| {
        c["at"] = json!(at(t));
        let n = commands.len();
        commands.push((t, n, c));
    };

    // Pools: bought during the first day; one in `subscription_every` is a subscription.
    let mut bought = Vec::with_capacity(p.pools as usize);
    let mut subscriptions = 0u32;
    for i in 0..p.pools {
        let t = start + Duration::seconds(rng.below(86_400) as i64);
        bought.push(t);
        let mut c = json!({"type": "purchase", "account": account_id(i % p.accounts), "pool": pool_id(i), "spec": SPEC, "nodes": 1});
        if p.is_subscription(i) {
            subscriptions += 1;
            let yearly = p.yearly_every > 0 && subscriptions % p.yearly_every == 0;
            if yearly {
                c["mode"] = json!("yearly");
                c["years"] = json!(1);
            } else {
                c["mode"] = json!("monthly");
                c["months"] = json!(1);
            }
            push(t, c);
            if p.auto_renew {
                let mut r = json!({"type": "set_auto_renew", "pool": pool_id(i), "enabled": true});
                if yearly {
                    r["years"] = json!(1);
                } else {
                    r["months"] = json!(1);
                }
                push(t + Duration::seconds(1), r);
            }
        } else {
            c["mode"] = json!("on_demand");
            c["ready"] = json!(true);
            push(t, c);
        }
    }

    // Scaling: every `scale_every`-th pool once a day after its purchase day, 1 ↔ 2 nodes (and,
    // in `mix`, now and then to the other spec and back).
    if p.scale_every > 0 {
        for d in 1..p.days {
            for i in (0..p.pools).step_by(p.scale_every as usize) {
                let t = day(d) + Duration::seconds(rng.below(86_400) as i64);
                let nodes = if d % 2 == 1 { 2 } else { 1 };
                let mut c = json!({"type": "scale", "pool": pool_id(i), "nodes": nodes});
                if p.scale_spec && d % 4 == 1 {
                    c["spec"] = json!(GPU_SPEC);
                } else if p.scale_spec && d % 4 == 2 {
                    c["spec"] = json!(SPEC);
                }
                push(t, c);
            }
        }
    }

    // Training jobs on the public pool: 1–4 nodes for 1–6 hours, then stopped and deleted.
    for d in 0..p.days {
        for k in 0..p.jobs_per_day {
            let job = format!("train-{d}-{k}");
            let account = account_id(rng.below(p.accounts as u64) as u32);
            let t = day(d) + Duration::seconds(rng.below(86_400) as i64);
            let stop = (t + Duration::seconds(rng.between(3_600, 6 * 3_600) as i64)).min(until);
            push(
                t,
                json!({"type": "start_job", "account": account, "job": job, "kind": "training", "spec": PUBLIC_SPEC, "nodes": rng.between(1, 4)}),
            );
            push(stop, json!({"type": "stop_job", "job": job}));
            push(stop.min(until), json!({"type": "delete_job", "job": job}));
        }
    }

    // Notebooks with a disk: up at 09:00 on day 0, stopped at 19:00 and restarted at 09:00 daily.
    for a in 0..p.accounts {
        for n in 0..p.notebooks_per_account {
            let job = format!("nb-{a}-{n}");
            for d in 0..p.days {
                let morning = day(d) + Duration::hours(9) + Duration::seconds(rng.below(600) as i64);
                let evening = day(d) + Duration::hours(19) + Duration::seconds(rng.below(600) as i64);
                push(
                    morning,
                    json!({"type": "start_job", "account": account_id(a), "job": job, "kind": "notebook", "spec": PUBLIC_SPEC,
                           "nodes": 1, "disk_gb": 5, "disk_hourly": "0.0014"}),
                );
                push(evening, json!({"type": "stop_job", "job": job}));
            }
        }
    }

    // Packages of public-pool node-hours, and top-ups.
    for a in 0..p.accounts {
        if p.package_every_days > 0 {
            for (k, d) in (0..p.days).step_by(p.package_every_days as usize).enumerate() {
                let t = day(d) + Duration::seconds(rng.below(3_600) as i64);
                push(
                    t,
                    json!({"type": "buy_package", "account": account_id(a), "package": format!("pkg-{a}-{k}"), "spec": PUBLIC_SPEC,
                           "quantity": 1, "hours": 100, "valid_days": 30, "price": "300.00", "alert_below": 10}),
                );
            }
        }
        if p.top_up_every_days > 0 {
            for d in (0..p.days).step_by(p.top_up_every_days as usize) {
                let t = day(d) + Duration::seconds(rng.below(86_400) as i64);
                push(t, json!({"type": "top_up", "account": account_id(a), "amount": "1000.00"}));
            }
        }
    }

    commands.sort_by_key(|(t, n, _)| (*t, *n));
    let accounts: Vec<Value> = (0..p.accounts).map(|a| json!({"id": account_id(a), "balance": p.balance, "level": "standard"})).collect();
    json!({
        "name": format!("bench-{}", p.name),
        "catalog": [
            {"spec": SPEC, "hourly": "3.50", "monthly": "1750.00", "yearly": "17500.00"},
            {"spec": GPU_SPEC, "hourly": "28.00", "monthly": "14000.00", "yearly": "140000.00"},
            {"spec": PUBLIC_SPEC, "hourly": "3.40"}
        ],
        "accounts": accounts,
        "commands": commands.into_iter().map(|(_, _, c)| c).collect::<Vec<_>>(),
        "until": at(until),
    })
}

/// The scenario as it is written to disk: one command per line, for people and for `diff`.
pub fn to_text(scenario: &Value) -> String {
    let mut out = String::from("{\n");
    let obj = scenario.as_object().expect("a scenario is an object");
    let keys = ["name", "catalog", "accounts", "commands", "until"];
    for (k, key) in keys.iter().enumerate() {
        let value = &obj[*key];
        out.push_str(&format!("  {}: ", json!(key)));
        match value {
            Value::Array(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    out.push_str("    ");
                    out.push_str(&item.to_string());
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str("  ]");
            }
            other => out.push_str(&other.to_string()),
        }
        out.push_str(if k + 1 < keys.len() { ",\n" } else { "\n" });
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolbill_domain::Command;

    #[test]
    fn the_same_seed_gives_the_same_workload_and_another_seed_another() {
        let p = Params::preset("small", 7).unwrap();
        assert_eq!(to_text(&generate(&p)), to_text(&generate(&p)));
        let q = Params { seed: 8, ..p.clone() };
        assert_ne!(to_text(&generate(&p)), to_text(&generate(&q)));
    }

    #[test]
    fn splitmix_is_the_published_sequence() {
        // splitmix64 from seed 0: its first outputs are well known.
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn a_generated_scenario_is_valid_and_has_what_its_parameters_say() {
        let p = Params::preset("small", 20231123).unwrap();
        let text = to_text(&generate(&p));
        let scenario = poolbill_scenario::parse(&text).expect("the generator writes the contract's format");
        assert_eq!(scenario.accounts.len(), 4);
        assert_eq!(scenario.catalog.len(), 3);
        assert_eq!(scenario.until, p.until());
        // The file is already in order of `at`: parsing (a stable sort) keeps every index in place.
        assert!(scenario.steps().enumerate().all(|(i, s)| s.index == i));
        let count = |f: fn(&Command) -> bool| scenario.steps().filter(|s| f(&s.command)).count();
        assert_eq!(count(|c| matches!(c, Command::Purchase { .. })), 24);
        // Pools 0, 3, … 21 scale on days 1 and 2.
        assert_eq!(count(|c| matches!(c, Command::Scale { .. })), 8 * 2);
        // Every fourth pool is a subscription, each with auto-renewal.
        assert_eq!(count(|c| matches!(c, Command::SetAutoRenew { .. })), 6);
        // 4 training jobs a day + one notebook per account started each of 3 mornings.
        assert_eq!(count(|c| matches!(c, Command::StartJob { .. })), 4 * 3 + 4 * 3);
        assert_eq!(count(|c| matches!(c, Command::DeleteJob { .. })), 4 * 3);
        assert_eq!(count(|c| matches!(c, Command::BuyPackage { .. })), 4 * 2);
        assert_eq!(count(|c| matches!(c, Command::TopUp { .. })), 4 * 3);
    }

    #[test]
    fn the_region_preset_is_the_issues_workload() {
        let p = Params::preset("region", 1).unwrap();
        let v = generate(&p);
        let commands = v["commands"].as_array().unwrap();
        let purchases: Vec<&Value> = commands.iter().filter(|c| c["type"] == "purchase").collect();
        assert_eq!(purchases.len(), 1000);
        assert_eq!(purchases.iter().filter(|c| c["mode"] == "on_demand" && c["ready"] == true).count(), 750);
        assert_eq!(purchases.iter().filter(|c| c["mode"] == "monthly").count(), 250);
        assert_eq!(v["accounts"].as_array().unwrap().len(), 20);
        // A scale on every tenth pool each day after the first.
        assert_eq!(commands.iter().filter(|c| c["type"] == "scale").count(), 100 * 29);
        assert_eq!(commands.len(), 1000 + 2900);
        assert_eq!(v["until"], "2023-05-01T00:00:00+08:00");
    }
}
