//! The binary codec: every variant round-trips exactly (scale, sign, nanoseconds, offset), and
//! no other input decodes: wrong type or version, a prefix, a trailing byte, malformed fields.

use super::*;
use poolbill_testkit::{d, t};
use std::collections::BTreeSet;

fn s(text: &str) -> String {
    text.to_string()
}

/// Decimals whose text a lossy codec would change: trailing zeros, signs, extremes of the
/// mantissa and of the scale.
const DECIMALS: [&str; 12] = [
    "1.00",
    "-0.50",
    "0",
    "0.00",
    "1750.00",
    "0.75055555",
    "79228162514264337593543950335",
    "-79228162514264337593543950335",
    "0.0000000000000000000000000001",
    "-7.9228162514264337593543950335",
    "3.5",
    "1000000",
];

/// Instants at other offsets than Beijing's, with nanoseconds, before the epoch, and a leap second.
const INSTANTS: [&str; 7] = [
    "2023-04-18T09:59:30+08:00",
    "2023-04-18T01:30:00Z",
    "2023-04-18T09:59:30.123456789-05:30",
    "1969-12-31T23:59:59.999999999+14:00",
    "1900-01-01T00:00:00.000000001-12:00",
    "2262-04-11T23:47:16.854775807+00:01",
    "2016-12-31T23:59:60.5Z",
];

fn lines() -> Vec<BillLine> {
    let amounts = Amounts { list_price: d("0.75055555"), discount: d("0"), round_off: d("0.00055555"), payable: d("0.75") };
    let unused = UnusedPart {
        monthly: d("17500.00"),
        nodes: 2,
        factor: d("11.7742"),
        period_end: t("2024-04-08T23:59:59+08:00"),
        amount: d("34341.40833333"),
        yearly: true,
    };
    let align =
        Alignment { day: 15, from: t("2023-05-08T23:59:59+08:00"), to: t("2023-05-15T23:59:59+08:00"), factor: d("0.2258"), amount: d("395.15") };
    let bases = [
        Basis::Usage { spec: s("modelarts.vm.cpu.8ud"), nodes: 1, seconds: 772, hourly: d("3.50"), covered_node_seconds: 0 },
        Basis::Usage { spec: s("gpu"), nodes: u32::MAX, seconds: i64::MIN, hourly: d("-0.50"), covered_node_seconds: i64::MAX },
        Basis::Package { package: s("pkg-1"), spec: s("modelarts.vm.cpu.8ud"), nodes: 2, seconds: 1800, node_seconds: 3600 },
        Basis::PackagePrice { spec: s("modelarts.vm.cpu.8ud"), quantity: 3, hours: 100, price: d("900.00") },
        Basis::Refund { full: true, unused: None, unbegun: d("0") },
        Basis::Refund { full: false, unused: Some(unused), unbegun: d("1750.00") },
        Basis::Term { spec: s("modelarts.vm.cpu.8ud"), nodes: 1, term: Term::Months(1), unit_price: d("1750.00"), align: None },
        Basis::Term { spec: s("modelarts.vm.cpu.8ud"), nodes: 4, term: Term::Years(2), unit_price: d("17500.00"), align: Some(align) },
        Basis::Change {
            from_spec: s("modelarts.vm.cpu.8ud"),
            from_nodes: 1,
            to_spec: s("modelarts.vm.cpu.16ud"),
            to_nodes: 2,
            old_monthly: d("1750.00"),
            new_monthly: d("3500.00"),
            factor: d("0.6581"),
            yearly: false,
        },
        Basis::Change {
            from_spec: s(""),
            from_nodes: 0,
            to_spec: s("小"),
            to_nodes: 0,
            old_monthly: d("17500"),
            new_monthly: d("0.0000000000000000000000000001"),
            factor: d("-1.0000"),
            yearly: true,
        },
    ];
    let items =
        [Item::Compute, Item::Storage, Item::Purchase, Item::Renewal, Item::Upgrade, Item::Downgrade, Item::Conversion, Item::Refund, Item::Package];
    let modes = [BillingMode::OnDemand, BillingMode::Monthly, BillingMode::Yearly, BillingMode::Package];
    bases
        .into_iter()
        .enumerate()
        .map(|(i, basis)| BillLine {
            resource: format!("pool-{i}"),
            account: s("acct-1"),
            mode: modes[i % modes.len()],
            item: items[i % items.len()],
            start: t(INSTANTS[i % INSTANTS.len()]),
            end: t("2023-04-18T11:00:00+08:00"),
            amounts,
            basis,
            balance: d(DECIMALS[i % DECIMALS.len()]),
        })
        .collect()
}

fn commands() -> Vec<Command> {
    let price = Price { hourly: Some(d("3.50")), monthly: None, yearly: Some(d("17500.00")) };
    vec![
        Command::SetPrice { spec: s("modelarts.vm.cpu.8ud"), price },
        Command::SetPolicy { policy: Policy::default() },
        Command::OpenAccount { account: s("acct-1"), balance: d("100000.00"), level: s("standard"), discount: d("0.10") },
        Command::TopUp { account: s("acct-1"), amount: d("-0.50") },
        Command::Purchase {
            account: s("acct-1"),
            pool: s("pool-1"),
            spec: s("modelarts.vm.cpu.8ud"),
            nodes: 2,
            mode: BillingMode::Monthly,
            term: Some(Term::Months(2)),
            pool_type: PoolType::Dedicated,
            region: Some(s("cn-north-4")),
            ready: false,
        },
        Command::Purchase {
            account: s("acct-1"),
            pool: s("pool-2"),
            spec: s("modelarts.vm.cpu.8ud"),
            nodes: 1,
            mode: BillingMode::OnDemand,
            term: None,
            pool_type: PoolType::Public,
            region: None,
            ready: true,
        },
        Command::Ready { pool: s("pool-1") },
        Command::Delete { pool: s("pool-1") },
        Command::Renew { pool: s("pool-1"), term: Term::Years(1), align_day: Some(15) },
        Command::Renew { pool: s("pool-1"), term: Term::Months(3), align_day: None },
        Command::SetAutoRenew { pool: s("pool-1"), enabled: true, term: Some(Term::Months(1)), days_before: 7, count: Some(3) },
        Command::SetAutoRenew { pool: s("pool-1"), enabled: false, term: None, days_before: 0, count: None },
        Command::Convert { pool: s("pool-1"), term: Term::Months(1) },
        Command::Scale { pool: s("pool-1"), nodes: Some(4), spec: None },
        Command::Scale { pool: s("pool-1"), nodes: None, spec: Some(s("modelarts.vm.cpu.16ud")) },
        Command::Unsubscribe { pool: s("pool-1") },
        Command::BuyPackage {
            account: s("acct-1"),
            package: s("pkg-1"),
            spec: s("modelarts.vm.cpu.8ud"),
            quantity: 1,
            hours: 100,
            valid_days: 30,
            price: d("300.00"),
            region: Some(s("cn-east-3")),
            alert_below: Some(d("10")),
        },
        Command::BuyPackage {
            account: s("acct-1"),
            package: s("pkg-2"),
            spec: s("modelarts.vm.cpu.8ud"),
            quantity: 0,
            hours: 0,
            valid_days: 0,
            price: d("0"),
            region: None,
            alert_below: None,
        },
        Command::StartJob {
            account: s("acct-1"),
            job: s("nb-1"),
            kind: JobKind::Notebook,
            spec: s("modelarts.vm.cpu.8u.public"),
            nodes: 1,
            pool: Some(s("pool-1")),
            model: Some(s("m")),
            disk_gb: Some(5),
            disk_hourly: Some(d("0.007")),
            region: Some(s("cn-north-4")),
        },
        Command::StartJob {
            account: s("acct-1"),
            job: s("svc-1"),
            kind: JobKind::AutoLearning,
            spec: s("modelarts.vm.cpu.8u.public"),
            nodes: 3,
            pool: None,
            model: None,
            disk_gb: None,
            disk_hourly: None,
            region: None,
        },
        Command::StopJob { job: s("nb-1") },
        Command::DeleteJob { job: s("nb-1") },
    ]
}

/// At least one event per variant, every nested variant and both sides of every option.
fn samples() -> Vec<Event> {
    let a = || s("acct-1");
    let p = || s("pool-1");
    let period = Period { start: t("2023-03-08T15:50:04+08:00"), end: t("2023-04-08T23:59:59+08:00") };
    let mut levels = BTreeMap::new();
    levels.insert(s("gold"), Level { grace_days: 30, retention_days: 0 });
    levels.insert(s("standard"), Level { grace_days: 15, retention_days: 15 });
    levels.insert(s("账户"), Level { grace_days: u32::MAX, retention_days: 1 });
    let kinds = [JobKind::Training, JobKind::Notebook, JobKind::Service, JobKind::Workflow, JobKind::AutoLearning];
    let rules = [
        Rule::R1,
        Rule::R2,
        Rule::R3,
        Rule::R4,
        Rule::R5,
        Rule::R6,
        Rule::R7,
        Rule::R8,
        Rule::R9,
        Rule::R10,
        Rule::R11,
        Rule::R12,
        Rule::R13,
        Rule::R14,
        Rule::R15,
        Rule::R16,
        Rule::R17,
    ];
    let mut events = vec![
        Event::PriceSet {
            spec: s("modelarts.vm.cpu.8ud"),
            price: Price { hourly: Some(d("3.50")), monthly: Some(d("1750.00")), yearly: Some(d("17500.00")) },
        },
        Event::PriceSet { spec: s(""), price: Price::default() },
        Event::PolicySet { policy: Policy { levels } },
        Event::PolicySet { policy: Policy { levels: BTreeMap::new() } },
        Event::AccountOpened { account: a(), balance: d("100000.00"), level: s("standard"), discount: d("0.10") },
        Event::ToppedUp { account: a(), amount: d("500.00"), balance_after: d("-0.50") },
        Event::PoolPurchased {
            account: a(),
            pool: p(),
            spec: s("modelarts.vm.cpu.8ud"),
            nodes: 2,
            mode: BillingMode::Yearly,
            pool_type: PoolType::Dedicated,
            region: Some(s("cn-north-4")),
            period: Some(period),
        },
        Event::PoolPurchased {
            account: a(),
            pool: p(),
            spec: s("modelarts.vm.cpu.8ud"),
            nodes: 1,
            mode: BillingMode::OnDemand,
            pool_type: PoolType::Public,
            region: None,
            period: None,
        },
        Event::PoolReady { account: a(), pool: p(), hourly: d("3.50") },
        Event::PoolScaled { account: a(), pool: p(), spec: s("modelarts.vm.cpu.16ud"), nodes: 4, hourly: Some(d("7.00")) },
        Event::PoolScaled { account: a(), pool: p(), spec: s("modelarts.vm.cpu.16ud"), nodes: 4, hourly: None },
        Event::PoolRenewed { account: a(), pool: p(), months: 12, end: t("2024-04-08T23:59:59+08:00"), auto: true },
        Event::PoolRenewed { account: a(), pool: p(), months: u32::MAX, end: t("2024-04-08T23:59:59-03:00"), auto: false },
        Event::PoolConverted { account: a(), pool: p(), mode: BillingMode::Monthly, months: 1, period },
        Event::PoolDeleted { account: a(), pool: p() },
        Event::ExpiryWarned { account: a(), pool: p(), expires_at: t("2023-04-08T23:59:59.25+09:00") },
        Event::PoolExpired { account: a(), pool: p() },
        Event::PoolFrozen { account: a(), pool: p() },
        Event::PoolReleased { account: a(), pool: p() },
        Event::PoolUnsubscribed { account: a(), pool: p() },
        Event::AutoRenewSet { account: a(), pool: p(), enabled: true, term: Some(Term::Years(1)), days_before: 7, count: Some(2) },
        Event::AutoRenewSet { account: a(), pool: p(), enabled: false, term: None, days_before: 0, count: None },
        Event::AutoRenewAttempted { account: a(), pool: p(), succeeded: false, reason: Some(s("R8: balance 12.00 < 1750.00")) },
        Event::AutoRenewAttempted { account: a(), pool: p(), succeeded: true, reason: None },
        Event::JobStopped { account: a(), job: s("job-1") },
        Event::JobDeleted { account: a(), job: s("job-1") },
        Event::PackageBought {
            account: a(),
            package: s("pkg-1"),
            spec: s("modelarts.vm.cpu.8ud"),
            region: Some(s("cn-east-3")),
            quantity: 2,
            hours: 100,
            expires_at: t("2023-05-18T23:59:59+08:00"),
            price: d("600.00"),
            alert_below: Some(d("10.5")),
        },
        Event::PackageBought {
            account: a(),
            package: s("pkg-2"),
            spec: s("modelarts.vm.cpu.8ud"),
            region: None,
            quantity: 1,
            hours: 1,
            expires_at: t("2023-05-18T23:59:59Z"),
            price: d("0"),
            alert_below: None,
        },
        Event::PackageAlerted { account: a(), package: s("pkg-1"), remaining_node_hours: d("9.99972222") },
        Event::PackageExpired { account: a(), package: s("pkg-1") },
        Event::ArrearsFrozen { account: a() },
        Event::ArrearsReleased { account: a() },
        Event::ArrearsEnded { account: a() },
        Event::CommandReceived { command: Command::Ready { pool: p() }, index: None, requested_at: None },
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let some = i % 2 == 0;
        events.push(Event::JobStarted {
            account: a(),
            job: format!("job-{i}"),
            kind,
            spec: s("modelarts.vm.cpu.8u.public"),
            nodes: i as u32 + 1,
            pool: some.then(p),
            model: some.then(|| s("model-1")),
            hourly: some.then(|| d("3.40")),
            disk_gb: some.then_some(5),
            disk_hourly: some.then(|| d("0.007")),
            region: some.then(|| s("cn-north-4")),
            billed_as: format!("training_job-{i}"),
        });
    }
    events.extend(DECIMALS.iter().map(|text| Event::ArrearsStarted { account: a(), balance: d(text) }));
    events.extend(INSTANTS.iter().map(|text| Event::CycleSettled { account: a(), start: t(text), end: t("2023-04-18T11:00:00+08:00") }));
    events.extend(lines().into_iter().map(|line| Event::Charged { line }));
    events.extend(commands().into_iter().enumerate().map(|(i, command)| Event::CommandReceived {
        command,
        index: Some([0, 1, 127, 128, u64::MAX][i % 5]),
        requested_at: Some(t(INSTANTS[i % INSTANTS.len()])),
    }));
    events.extend(rules.into_iter().enumerate().map(|(i, rule)| Event::CommandRejected {
        command: s("renew"),
        rule,
        reason: s("R3: the pool pool-1 does not exist ✗"),
        index: (i % 2 == 0).then_some(i as u64),
    }));
    events
}

fn encode(event: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    event.encode_binary(&mut out);
    out
}

fn json(event: &Event) -> String {
    serde_json::to_string(event).unwrap()
}

fn decode(event: &Event, bytes: &[u8]) -> Result<Event, DecodeError> {
    let name = event.event_type_name();
    Event::decode_binary(name, latest_version(name), bytes)
}

fn tag_of<T: Binary>(value: &T) -> u8 {
    let mut out = Vec::new();
    value.write(&mut out);
    out[0]
}

#[test]
fn the_samples_cover_every_variant_and_every_nested_variant() {
    let samples = samples();
    let tags: BTreeSet<u8> = samples.iter().map(|e| encode(e)[0]).collect();
    assert_eq!(tags, (0..EVENT_TYPES.len() as u8).collect(), "one event per tag");
    let bases: BTreeSet<u8> = lines().iter().map(|l| tag_of(&l.basis)).collect();
    assert_eq!(bases, (0..6).collect(), "every basis");
    let commands: BTreeSet<u8> = commands().iter().map(tag_of).collect();
    assert_eq!(commands, (0..16).collect(), "every command");
}

#[test]
fn event_type_name_is_the_tag_serde_writes_and_the_binary_tag_names_it() {
    for event in samples() {
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["type"], event.event_type_name(), "{event:?}");
        assert_eq!(EVENT_TYPES[usize::from(encode(&event)[0])], event.event_type_name(), "{event:?}");
        assert_eq!(event.encode().0, event.event_type_name());
    }
}

#[test]
fn every_sample_round_trips_exactly() {
    for event in samples() {
        let bytes = encode(&event);
        let back = decode(&event, &bytes).unwrap_or_else(|e| panic!("{event:?}: {e}"));
        // By text first: `==` on Decimal ignores the scale and on DateTime the offset.
        assert_eq!(json(&back), json(&event));
        assert_eq!(back, event);
        // Appends: what was in the buffer stays.
        let mut out = vec![0xAB];
        event.encode_binary(&mut out);
        assert_eq!(out[1..], bytes[..]);
    }
}

#[test]
fn decimals_keep_their_exact_bits_and_instants_their_offset_and_nanoseconds() {
    let mut negative_zero = d("0.00");
    negative_zero.set_sign_negative(true);
    let decimals = DECIMALS.iter().map(|text| d(text)).chain([negative_zero, Decimal::MAX, Decimal::MIN]);
    for decimal in decimals {
        let event = Event::ArrearsStarted { account: s("a"), balance: decimal };
        let Ok(Event::ArrearsStarted { balance, .. }) = decode(&event, &encode(&event)) else { panic!("{decimal}") };
        assert_eq!(balance.serialize(), decimal.serialize(), "{decimal}: sign, scale and mantissa");
    }
    for text in INSTANTS {
        let instant = t(text);
        let event = Event::CycleSettled { account: s("a"), start: instant, end: instant };
        let Ok(Event::CycleSettled { start, .. }) = decode(&event, &encode(&event)) else { panic!("{text}") };
        let parts = |i: Instant| (i.timestamp(), i.timestamp_subsec_nanos(), i.offset().local_minus_utc());
        assert_eq!(parts(start), parts(instant), "{text}");
        assert_eq!(start.to_rfc3339(), instant.to_rfc3339(), "{text}");
    }
}

#[test]
fn another_event_type_is_refused_naming_both() {
    for event in samples() {
        let bytes = encode(&event);
        let name = event.event_type_name();
        for other in EVENT_TYPES.iter().filter(|other| **other != name) {
            let err = Event::decode_binary(other, latest_version(other), &bytes).unwrap_err();
            assert!(err.detail.contains(name) && err.detail.contains(other), "{err}");
            assert_eq!(err.event_type, *other);
        }
        assert!(Event::decode_binary("no_such_event", 1, &bytes).is_err());
    }
}

#[test]
fn only_the_latest_schema_version_has_a_layout() {
    for event in samples() {
        let bytes = encode(&event);
        let name = event.event_type_name();
        let latest = latest_version(name);
        for version in [0, latest - 1, latest + 1, u32::MAX].into_iter().filter(|v| *v != latest) {
            let err = Event::decode_binary(name, version, &bytes).unwrap_err();
            assert!(err.detail.contains("no binary layout"), "{err}");
            assert_eq!(err.schema_version, version);
        }
    }
    // Today two types are past v1: their v1 payloads are JSON only.
    for name in ["topped_up", "job_started"] {
        assert_eq!(latest_version(name), 2);
    }
}

#[test]
fn every_strict_prefix_and_any_trailing_byte_is_refused() {
    for event in samples() {
        let bytes = encode(&event);
        for end in 0..bytes.len() {
            assert!(decode(&event, &bytes[..end]).is_err(), "{event:?}: a prefix of {end} of {} bytes", bytes.len());
        }
        for extra in [0x00, 0x01, 0xFF] {
            let mut longer = bytes.clone();
            longer.push(extra);
            let err = decode(&event, &longer).unwrap_err();
            assert!(err.detail.contains("trailing"), "{err}");
        }
    }
}

#[test]
fn a_flipped_byte_never_panics_and_what_decodes_encodes_to_the_same_bytes() {
    let (mut tried, mut decoded) = (0, 0);
    for event in samples() {
        let bytes = encode(&event);
        for i in 0..bytes.len() {
            for mask in [0x01, 0x02, 0x40, 0x80, 0xFF] {
                let mut flipped = bytes.clone();
                flipped[i] ^= mask;
                tried += 1;
                // Either an error or an event whose encoding is exactly these bytes (one
                // encoding per event: nothing is read loosely).
                if let Ok(other) = decode(&event, &flipped) {
                    decoded += 1;
                    assert_eq!(encode(&other), flipped, "{event:?} with byte {i} ^ {mask:#x}");
                }
            }
        }
    }
    assert!(decoded > 0 && decoded < tried, "{decoded} of {tried}");
}

/// A hand-made payload, and the words its error must contain.
fn refused(event_type: &str, bytes: &[u8], words: &str) {
    let err = Event::decode_binary(event_type, latest_version(event_type), bytes).unwrap_err();
    assert!(err.detail.contains(words), "{bytes:?}: {err}");
}

#[test]
fn malformed_fields_are_refused_by_name() {
    // arrears_frozen (24) is one string.
    assert_eq!(encode(&Event::ArrearsFrozen { account: s("ab") }), [24, 2, b'a', b'b']);
    refused("arrears_frozen", &[24, 2, 0xC3, 0x28], "not UTF-8");
    refused("arrears_frozen", &[24, 0x82, 0x00, b'a', b'b'], "over-long varint");
    refused("arrears_frozen", &[24, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], "truncated");
    refused("arrears_frozen", &[24, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], "truncated");
    refused("arrears_frozen", &[24, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02], "exceeds 64 bits");
    refused("arrears_frozen", &[24, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], "exceeds 64 bits");
    refused("arrears_frozen", &[], "truncated");
    refused("arrears_frozen", &[31], "unknown event tag 31");
    refused("arrears_frozen", &[255, 0], "unknown event tag 255");

    // arrears_started (23): a string, then a decimal: one byte of sign and scale, the mantissa.
    assert_eq!(encode(&Event::ArrearsStarted { account: s("a"), balance: d("-0.50") }), [23, 1, b'a', 0x82, 50]);
    refused("arrears_started", &[23, 1, b'a', 29, 1], "scale 29");
    refused("arrears_started", &[23, 1, b'a', 0x80 | 0x7F, 1], "scale 127");
    let mut max = vec![23, 1, b'a', 0];
    put_varint(&mut max, (1 << 96) - 1);
    assert!(Event::decode_binary("arrears_started", 1, &max).is_ok(), "2^96 − 1 is Decimal::MAX");
    let mut above = vec![23, 1, b'a', 0];
    put_varint(&mut above, 1 << 96);
    refused("arrears_started", &above, "exceeds 96 bits");

    // pool_renewed (7): months is a u32, then the end instant, then the flag.
    let renewed = encode(&Event::PoolRenewed { account: s("a"), pool: s("p"), months: u32::MAX, end: t("2023-04-08T23:59:59+08:00"), auto: true });
    assert_eq!(renewed[5..10], [0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
    let mut wide = renewed.clone();
    wide[9] = 0x1F;
    refused("pool_renewed", &wide, "exceeds 32 bits");
    let mut flag = renewed.clone();
    *flag.last_mut().unwrap() = 2;
    refused("pool_renewed", &flag, "flag byte 2");

    // cycle_settled (28): two instants: zigzag seconds, nanoseconds, zigzag offset.
    let instant = |seconds: i64, nanos: u32, offset: i64| {
        let mut out = vec![28, 1, b'a'];
        put_zigzag(&mut out, seconds);
        put_varint(&mut out, u128::from(nanos));
        put_zigzag(&mut out, offset);
        let end = out[3..].to_vec();
        out.extend(end);
        out
    };
    assert!(Event::decode_binary("cycle_settled", 1, &instant(1_681_781_970, 0, 28_800)).is_ok());
    refused("cycle_settled", &instant(1_681_781_970, 0, 86_400), "offset of 86400 s");
    refused("cycle_settled", &instant(1_681_781_970, 0, -86_400), "offset of -86400 s");
    refused("cycle_settled", &instant(1_681_781_970, 0, i64::MAX), "offset");
    refused("cycle_settled", &instant(i64::MAX, 0, 0), "out of range");
    refused("cycle_settled", &instant(i64::MIN, 0, 0), "out of range");
    refused("cycle_settled", &instant(1_681_781_970, 2_000_000_000, 0), "out of range");
    // A leap second's nanoseconds only at a minute's last second.
    refused("cycle_settled", &instant(1_681_781_970, 1_500_000_000, 0), "out of range");

    // pool_scaled (6): an option byte is 0 or 1.
    let mut scaled = encode(&Event::PoolScaled { account: s("a"), pool: s("p"), spec: s("s"), nodes: 1, hourly: None });
    *scaled.last_mut().unwrap() = 2;
    refused("pool_scaled", &scaled, "option byte 2");

    // policy_set (1): level names ascending, each once.
    let level = |name: u8| [1, name, 15, 15];
    let policy = |names: &[u8]| [&[1, names.len() as u8][..], &names.iter().flat_map(|n| level(*n)).collect::<Vec<_>>()].concat();
    assert!(Event::decode_binary("policy_set", 1, &policy(b"ab")).is_ok());
    refused("policy_set", &policy(b"ba"), "out of order");
    refused("policy_set", &policy(b"aa"), "out of order");
    refused("policy_set", &[1, 0x7F], "truncated");

    // Unknown nested tags.
    let charged = encode(&Event::Charged { line: lines().remove(0) });
    let mode = 1 + 1 + "pool-0".len() + 1 + "acct-1".len();
    assert_eq!(charged[mode], 0, "on_demand");
    let mut bad = charged.clone();
    bad[mode] = 4;
    refused("charged", &bad, "unknown billing mode tag 4");
    let mut bad = charged.clone();
    bad[mode + 1] = 9;
    refused("charged", &bad, "unknown item tag 9");
    let received = encode(&Event::CommandReceived { command: Command::Ready { pool: s("p") }, index: None, requested_at: None });
    assert_eq!(received[1], 5, "ready");
    let mut bad = received.clone();
    bad[1] = 16;
    refused("command_received", &bad, "unknown command tag 16");
    let rejected = encode(&Event::CommandRejected { command: s("c"), rule: Rule::R17, reason: s(""), index: None });
    assert_eq!(rejected, [30, 1, b'c', 16, 0, 0]);
    refused("command_rejected", &[30, 1, b'c', 17, 0, 0], "unknown rule tag 17");
}
