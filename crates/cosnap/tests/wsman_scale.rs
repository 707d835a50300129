//! A WS-Man enumeration of 2,000 VMs over the real host: between Pulls the open context
//! holds the host's id cursor, not encoded items (live heap measured by a counting
//! allocator: a fifth of the encoded items at most), and the items come out exactly as the
//! host enumerates them, in order.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use cosnap_cim::CimProvider;
use cosnap_host::{DiskSpec, Host, VmSpec};
use cosnap_wbem::request::DecodeLimits;
use cosnap_wbem::wsman::enumeration::ContextLimits;
use cosnap_wbem::wsman::{Service, encode};

/// Counts the bytes allocated and not yet freed, process-wide.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const VMS: usize = 2_000;
const CS: &str = "Msvm_ComputerSystem";
const VSSD: &str = "Msvm_VirtualSystemSettingData";
const URI: &str = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/";

fn build_host(dir: &std::path::Path) -> Host {
    let host = Host::open(dir.join("data")).unwrap();
    let disks = dir.join("disks");
    std::fs::create_dir_all(&disks).unwrap();
    for i in 0..VMS {
        let disk = disks.join(format!("vm{i}.raw"));
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let spec = VmSpec {
            memory_mb: 512,
            ..VmSpec::new(format!("scale-vm-{i}"), vec![DiskSpec::raw(disk)])
        };
        host.define_vm(&spec).unwrap();
    }
    host
}

fn envelope(action: &str, class: &str, body: &str) -> String {
    format!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:n="http://schemas.xmlsoap.org/ws/2004/09/enumeration"><s:Header>
<a:Action s:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/09/enumeration/{action}</a:Action>
<a:MessageID>uuid:0A1B2C3D-0000-4000-8000-00000000ABCD</a:MessageID>
<w:MaxEnvelopeSize>512000</w:MaxEnvelopeSize>
<w:ResourceURI s:mustUnderstand="true">{URI}{class}</w:ResourceURI>
</s:Header><s:Body>{body}</s:Body></s:Envelope>"#
    )
}

/// Text between the first `<{tag}>` and its end tag (empty when the element is absent).
fn inner<'a>(body: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    match (body.find(&open), body.find(&close)) {
        (Some(a), Some(b)) => &body[a + open.len()..b],
        _ => "",
    }
}

fn pull(service: &Service, class: &str, context: &str, max: usize) -> String {
    let body = format!(
        "<n:Pull><n:EnumerationContext>{context}</n:EnumerationContext><n:MaxElements>{max}</n:MaxElements></n:Pull>"
    );
    let reply = service.handle_body("alice", envelope("Pull", class, &body).as_bytes());
    assert_eq!(
        reply.status,
        200,
        "{}",
        &reply.body[..reply.body.len().min(2000)]
    );
    reply.body
}

/// Opens an enumeration of `class`, pulls its first `first` items and returns the context
/// (absent when that was everything) and the items' text.
fn open_and_pull(service: &Service, class: &str, first: usize) -> (Option<String>, String) {
    let enumerate = envelope("Enumerate", class, "<n:Enumerate/>");
    let reply = service.handle_body("alice", enumerate.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.body);
    let context = inner(&reply.body, "wsen:EnumerationContext").to_string();
    let body = pull(service, class, &context, first);
    (next_context(&body), inner(&body, "wsen:Items").to_string())
}

/// The context a Pull response leaves open, or `None` at the end.
fn next_context(body: &str) -> Option<String> {
    (!body.contains("<wsen:EndOfSequence/>"))
        .then(|| inner(body, "wsen:EnumerationContext").to_string())
}

/// Pulls to the end, `max` items at a time.
fn pull_rest(service: &Service, class: &str, mut context: Option<String>, max: usize) -> String {
    let mut got = String::new();
    let mut pulls = 0;
    while let Some(ctx) = context.take() {
        let body = pull(service, class, &ctx, max);
        got.push_str(inner(&body, "wsen:Items"));
        context = next_context(&body);
        pulls += 1;
        assert!(pulls <= VMS, "the enumeration never ends");
    }
    got
}

/// Live heap bytes `f` leaves behind (what it returns included).
fn held_by<T>(f: impl FnOnce() -> T) -> (isize, T) {
    let before = LIVE.load(Ordering::Relaxed);
    let kept = f();
    (LIVE.load(Ordering::Relaxed) - before, kept)
}

#[test]
fn two_thousand_vms_pull_from_a_cursor_in_the_hosts_order() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(build_host(dir.path()));
    let provider: Arc<dyn CimProvider> = host.clone();
    let service = Service::new(
        provider,
        "HOST".into(),
        DecodeLimits::default(),
        ContextLimits::default(),
    );

    for class in [VSSD, CS] {
        let expected: String = host
            .enumerate_instances(class)
            .unwrap()
            .iter()
            .map(|inst| {
                let mut out = String::new();
                encode::write_instance(&mut out, inst);
                out
            })
            .collect();
        assert!(
            expected.len() > VMS * 500,
            "{class}: {} bytes",
            expected.len()
        );

        // A first run warms the host's caches (statements, pages) up.
        let (context, first) = open_and_pull(&service, class, 50);
        let got = first + &pull_rest(&service, class, context, 97);
        assert!(
            got == expected,
            "{class}: the items differ from the host's enumeration"
        );

        let (cursor_bytes, cursor) = held_by(|| host.enumerate_cursor(class).unwrap());
        drop(cursor);
        let (context_bytes, (context, first)) = held_by(|| open_and_pull(&service, class, 50));
        let context_bytes = context_bytes - first.capacity() as isize;
        eprintln!(
            "{class}: encoded {} bytes, provider cursor {cursor_bytes}, open WS-Man context {context_bytes}",
            expected.len()
        );
        assert!(
            context_bytes < cursor_bytes + 128 * 1024,
            "{class}: an open context holds {context_bytes} bytes, its cursor {cursor_bytes}"
        );
        assert!(
            context_bytes < (expected.len() / 5) as isize,
            "{class}: an open context holds {context_bytes} bytes, the encoded items take {}",
            expected.len()
        );
        let got = first + &pull_rest(&service, class, context, 1000);
        assert!(
            got == expected,
            "{class}: the items differ from the host's enumeration"
        );
    }
}
