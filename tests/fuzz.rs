mod common;
use std::time::Instant as Clock;

fn rt() -> tokio::runtime::Runtime { tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap() }

fn go(text: &str) {
    let rt = rt();
    let t = Clock::now();
    let s = match poolbill_scenario::parse(text) { Ok(s) => s, Err(e) => { println!("parse err {e}"); return; } };
    rt.block_on(async {
        let e = poolbill_engine::Engine::temporary().await.unwrap();
        let r = poolbill_scenario::run(&e, &s).await;
        println!("ran {:?} {:?}", t.elapsed(), r.as_ref().map(|v| v.iter().map(|x| format!("{:?}", x.1.outcome)).collect::<Vec<_>>()));
        let d = e.document().await.unwrap();
        println!("events {} bills {:?} res {:?} acc {:?}", d.events, d.bills.iter().map(|b| (&b.item, &b.start, &b.end, &b.payable)).collect::<Vec<_>>(), d.resources.iter().map(|r| (&r.state, &r.expires_at)).collect::<Vec<_>>(), d.accounts);
        println!("verify {:?}", e.store().verify());
        let mut out = Vec::new();
        println!("export {:?}", poolbill_replay::jsonl::export(e.store(), &mut out));
        let imp = poolbill_replay::jsonl::import(&out[..]);
        println!("import {:?}", imp.as_ref().map(|v| v.len()).map_err(|e| e.to_string()));
        println!("as_of {:?}", e.as_of(poolbill_replay::Upto::All).await.map(|p| p.events).map_err(|e| e.to_string()));
    });
}

#[test]
fn probe() {
    let base = |at: &str, extra: &str, until: &str| format!(r#"{{"catalog":[{{"spec":"c","hourly":"3.50","monthly":"1750.00","yearly":"17500.00"}}],"accounts":[{{"id":"a","balance":"100000.00"}}],
      "commands":[{{"at":"{at}","type":"purchase","account":"a","pool":"p","spec":"c","nodes":1 {extra} }}],
      "until":"{until}"}}"#);
    go(&base("9999-12-20T00:00:00+08:00", r#","mode":"monthly","months":1"#, "9999-12-31T23:59:59+08:00"));
    go(&base("9999-12-31T23:00:00+00:00", r#","mode":"monthly","months":1"#, "9999-12-31T23:59:59+00:00"));
    go(&base("0001-01-01T00:00:00+08:00", r#","mode":"monthly","months":1"#, "0001-03-01T00:00:00+08:00"));
    go(&base("0001-01-01T00:00:00+00:00", r#","mode":"on_demand","ready":true"#, "0001-01-01T05:00:00+00:00"));
    go(&base("9999-12-31T20:00:00+00:00", r#","mode":"on_demand","ready":true"#, "9999-12-31T23:59:59+00:00"));
}
