//! `--format table`: the document for people. Its layout may change; scripts use JSON.

use poolbill_projections::Document;

pub fn render(doc: &Document) -> String {
    let mut out = String::new();
    out.push_str("BILLS (flow)\n");
    let rows: Vec<Vec<String>> = doc
        .bills
        .iter()
        .enumerate()
        .map(|(i, b)| {
            vec![
                (i + 1).to_string(),
                b.start.clone(),
                b.end.clone(),
                b.resource.clone(),
                b.account.clone(),
                b.mode.to_string(),
                b.item.to_string(),
                b.list_price.clone(),
                b.discount.clone(),
                b.round_off.clone(),
                b.payable.clone(),
            ]
        })
        .collect();
    // `#` is the number `poolbill explain --bill N` takes.
    grid(&mut out, &["#", "start", "end", "resource", "account", "mode", "item", "list", "discount", "round-off", "payable"], &rows);

    out.push_str("\nBILLS (detail, by month)\n");
    let rows: Vec<Vec<String>> = doc
        .detail_bills
        .iter()
        .map(|d| {
            vec![
                d.month.clone(),
                d.resource.clone(),
                d.account.clone(),
                d.mode.to_string(),
                d.usage_hours.clone(),
                d.list_price.clone(),
                d.discount.clone(),
                d.round_off.clone(),
                d.payable.clone(),
            ]
        })
        .collect();
    grid(&mut out, &["month", "resource", "account", "mode", "node-hours", "list", "discount", "round-off", "payable"], &rows);

    out.push_str("\nRESOURCES\n");
    let rows: Vec<Vec<String>> = doc
        .resources
        .iter()
        .map(|r| vec![r.id.clone(), r.state.to_string(), r.mode.to_string(), r.nodes.to_string(), r.expires_at.clone().unwrap_or_else(|| "-".into())])
        .collect();
    grid(&mut out, &["id", "state", "mode", "nodes", "expires at"], &rows);

    out.push_str("\nACCOUNTS\n");
    let rows: Vec<Vec<String>> =
        doc.accounts.iter().map(|a| vec![a.id.clone(), a.balance.clone(), if a.in_arrears { "yes" } else { "no" }.to_string()]).collect();
    grid(&mut out, &["id", "balance", "in arrears"], &rows);

    if !doc.rejections.is_empty() {
        out.push_str("\nREJECTIONS\n");
        let rows: Vec<Vec<String>> = doc
            .rejections
            .iter()
            .map(|r| vec![r.index.map_or("-".into(), |i| i.to_string()), r.r#type.clone(), r.rule.clone(), r.reason.clone()])
            .collect();
        grid(&mut out, &["index", "type", "rule", "reason"], &rows);
    }
    out.push_str(&format!("\n{} events\n", doc.events));
    out
}

fn grid(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        out.push_str("  (none)\n");
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    out.push_str(&line(header.to_vec()));
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
}
