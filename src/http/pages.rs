//! The dashboard's HTML: plain pages drawn on the server, with a few lines
//! of inline script that poll for live progress (no framework, no CDN).

use serde_json::Value;
use std::fmt::Write;

/// Escape text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #eee}\
progress{width:140px}pre{background:#f6f6f6;padding:8px;overflow:auto;max-height:24em}\
figure{display:inline-block;margin:6px}.running{color:#1f77b4}.failed{color:#c0392b}\
.completed{color:#2e7d32}.cancelled{color:#888}a{color:#1f5fa0}";

/// The page head; `polled()` counts live refreshes in `<body data-polls>`
/// (shows that a page is live, and lets a test see it).
fn head(title: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style>\
         <script>function polled(){{const b=document.body;b.dataset.polls=1+(+b.dataset.polls||0)}}</script>\
         </head><body data-polls=\"0\">",
        esc(title)
    )
}

/// Table rows of operations (also rebuilt by the index page's script).
fn rows(ops: &[Value], token: &str) -> String {
    let mut s = String::new();
    for op in ops {
        let id = text(&op["operation_id"]);
        let status = text(&op["status"]);
        let pct = op["progress_percent"].as_f64().unwrap_or(0.0);
        let _ = write!(
            s,
            "<tr data-id=\"{id}\"><td><a href=\"/op/{id}?token={token}\">{id}</a></td><td>{}</td>\
             <td class=\"{status}\">{status}</td><td><progress max=\"100\" value=\"{pct:.1}\"></progress> {pct:.1}%</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&text(&op["operation_type"])),
            esc(op["progress_message"].as_str().unwrap_or("")),
            esc(&text(&op["created_at"])),
            id = esc(&id),
            status = esc(&status),
            token = esc(token),
        );
    }
    s
}

const TABLE_HEAD: &str =
    "<tr><th>operation</th><th>type</th><th>status</th><th>progress</th><th>message</th><th>created</th></tr>";

/// `/`: the newest operations, refreshed every second without a reload.
pub fn index(list: &Value, token: &str) -> String {
    let ops = list["operations"].as_array().cloned().unwrap_or_default();
    let mut s = head("opsd");
    let _ = write!(
        s,
        "<h1>opsd</h1><p id=\"summary\">{} operations, {} active</p>\
         <table><thead>{TABLE_HEAD}</thead><tbody id=\"ops\">{}</tbody></table>",
        text(&list["total"]),
        text(&list["active"]),
        rows(&ops, token)
    );
    let _ = write!(
        s,
        "<script>\nconst T={tok};\n\
         function e(s){{return String(s==null?'':s).replace(/[&<>\"']/g,c=>'&#'+c.charCodeAt(0)+';')}}\n\
         async function poll(){{try{{const r=await fetch('/live/operations?token='+T);\
         if(r.ok){{const v=await r.json();\
         document.getElementById('summary').textContent=v.total+' operations, '+v.active+' active';\
         document.getElementById('ops').innerHTML=v.operations.map(o=>{{const p=(o.progress_percent||0).toFixed(1);\
         return '<tr data-id=\"'+e(o.operation_id)+'\"><td><a href=\"/op/'+e(o.operation_id)+'?token='+T+'\">'+e(o.operation_id)+'</a></td><td>'+e(o.operation_type)+\
         '</td><td class=\"'+e(o.status)+'\">'+e(o.status)+'</td><td><progress max=\"100\" value=\"'+p+'\"></progress> '+p+'%</td><td>'+\
         e(o.progress_message)+'</td><td>'+e(o.created_at)+'</td></tr>'}}).join('');polled()}}}}catch(x){{}}\
         setTimeout(poll,1000)}}\nsetTimeout(poll,1000);\n</script></body></html>",
        tok = serde_json::to_string(token).unwrap_or_default()
    );
    s
}

/// `/op/ID`'s changing part: progress, parameters, result, children, log
/// tail and one SVG chart per metric (also served alone at `/live/op/ID`).
pub fn operation_main(
    op: &Value,
    children: &Value,
    metrics: &[Value],
    log: Option<&str>,
    token: &str,
) -> String {
    let status = text(&op["status"]);
    let pct = op["progress_percent"].as_f64().unwrap_or(0.0);
    let mut s = String::new();
    let _ = write!(
        s,
        "<p><span id=\"status\" class=\"{st}\">{st}</span> · <progress max=\"100\" value=\"{pct:.1}\"></progress> \
         <span id=\"percent\">{pct:.1}%</span> {msg}</p>",
        st = esc(&status),
        msg = esc(op["progress_message"].as_str().unwrap_or("")),
    );
    if let Some(e) = op["error_message"].as_str() {
        let _ = write!(s, "<p class=\"failed\">error: {}</p>", esc(e));
    }
    let pretty = |v: &Value| esc(&serde_json::to_string_pretty(v).unwrap_or_default());
    let _ = write!(
        s,
        "<h2>Parameters</h2><pre id=\"params\">{}</pre>",
        pretty(&op["metadata"])
    );
    if !op["result_summary"].is_null() {
        let _ = write!(
            s,
            "<h2>Result</h2><pre id=\"result\">{}</pre>",
            pretty(&op["result_summary"])
        );
    }
    if let Some(kids) = children.as_array().filter(|k| !k.is_empty()) {
        let _ = write!(
            s,
            "<h2>Children</h2><table><thead>{TABLE_HEAD}</thead><tbody>{}</tbody></table>",
            rows(kids, token)
        );
    }
    let curves = super::svg::curves(metrics);
    if !curves.is_empty() {
        let _ = write!(s, "<h2>Metrics ({} points)</h2>", metrics.len());
        for (key, pts) in &curves {
            let _ = write!(
                s,
                "<figure data-metric=\"{k}\" data-points=\"{n}\">{svg}</figure>",
                k = esc(key),
                n = pts.len(),
                svg = super::svg::chart(key, pts, metrics, 480, 260)
            );
        }
    }
    if let Some(log) = log {
        let _ = write!(s, "<h2>Log (tail)</h2><pre id=\"log\">{}</pre>", esc(log));
    }
    s
}

/// `/op/ID`: the whole page; its script reloads the main part every 1.5 s
/// while the operation is active.
pub fn operation(op: &Value, main: &str, token: &str) -> String {
    let id = text(&op["operation_id"]);
    let mut s = head(&id);
    let _ = write!(
        s,
        "<p><a href=\"/?token={tok}\">← all operations</a></p><h1>{kind} {id}</h1>{parent}<div id=\"main\">{main}</div>",
        tok = esc(token),
        kind = esc(&text(&op["operation_type"])),
        id = esc(&id),
        parent = match op["parent_operation_id"].as_str() {
            Some(p) => format!(
                "<p>child of <a href=\"/op/{p}?token={t}\">{p}</a></p>",
                p = esc(p),
                t = esc(token)
            ),
            None => String::new(),
        },
    );
    let _ = write!(
        s,
        "<script>\nconst T={tok},ID={id};\n\
         function active(){{const e=document.getElementById('status');return e&&['pending','resuming','running'].includes(e.textContent)}}\n\
         async function poll(){{if(!active())return;try{{const r=await fetch('/live/op/'+ID+'?token='+T);\
         if(r.ok){{document.getElementById('main').innerHTML=await r.text();polled()}}}}catch(x){{}}setTimeout(poll,1500)}}\n\
         setTimeout(poll,1500);\n</script></body></html>",
        tok = serde_json::to_string(token).unwrap_or_default(),
        id = serde_json::to_string(&id).unwrap_or_default(),
    );
    s
}

/// A page for a failed request.
pub fn error(message: &str) -> String {
    format!(
        "{}<h1>opsd</h1><p class=\"failed\">{}</p></body></html>",
        head("opsd: error"),
        esc(message)
    )
}
