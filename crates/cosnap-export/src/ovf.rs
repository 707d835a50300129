//! The OVF 2.x descriptor (DMTF DSP0243 / schema DSP8023) of a whole collection export: an
//! `Envelope` with `References` (one `File` per exported disk), a `DiskSection`, a
//! `NetworkSection` when VMs have NICs, and one `VirtualSystemCollection` holding one
//! `VirtualSystem` per VM whose `VirtualHardwareSection` has RASD items for CPU (3),
//! memory (4), NICs (10) and disks (17, `HostResource` = `ovf:/disk/<diskId>`).
//!
//! Element order follows the DSP8023 2.x sequences and the CIM RASD/VSSD schemas (whose
//! elements are alphabetical); the tests validate descriptors with `xmllint --schema`
//! against the DMTF's DSP8023 2.0.1 XSD pinned in `tests/data/ovf-2.0.1/`. A differencing disk's parent lives in another package, so
//! `ovf:parentRef` (which names a disk of the same descriptor) is not used; the chain is
//! recorded in `cosnap-package.json` instead.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use cosnap_cim::Instance;
use cosnap_cim::xml::{Document, Node};
use cosnap_disk::Format;

use crate::cimxml::esc;
use crate::names::{href_decode, href_encode};

/// The OVF 2 envelope namespace.
pub const OVF_NS: &str = "http://schemas.dmtf.org/ovf/envelope/2";
/// The namespace of RASD elements (`rasd:` items of the hardware section).
pub const RASD_NS: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
/// The namespace of VSSD elements (the `vssd:` system of the hardware section).
pub const VSSD_NS: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";

/// One disk as the descriptor shows it.
#[derive(Debug, Clone)]
pub struct OvfDisk {
    /// `ovf:diskId`, unique in the descriptor.
    pub disk_id: String,
    /// The exported file, relative to the package directory; `None` without storage.
    pub file: Option<OvfFile>,
    /// Guest-visible size in bytes.
    pub capacity: u64,
    /// The disk's image format, written as `ovf:format`.
    pub format: Format,
    /// The RASD `ElementName` of the disk's drive item.
    pub element_name: String,
}

#[derive(Debug, Clone)]
/// One `File` of the descriptor's `References`.
pub struct OvfFile {
    /// `ovf:id`, unique in the descriptor.
    pub file_id: String,
    /// The file's path relative to the package directory (written as the `ovf:href`).
    pub rel_path: String,
    /// The file's size in bytes (`ovf:size`).
    pub size: u64,
}

#[derive(Debug, Clone)]
/// One VM as the descriptor shows it: a `VirtualSystem` and its hardware.
pub struct OvfVm {
    /// The VM's id (`ovf:id` and the VSSD `VirtualSystemIdentifier`).
    pub id: String,
    /// The VM's name.
    pub name: String,
    /// The VM's resource settings at the snapshot (processors, memory, NICs).
    pub resources: Vec<Instance>,
    /// The VM's disks.
    pub disks: Vec<OvfDisk>,
}

/// The URI written as `ovf:format` for each disk format.
pub fn format_uri(f: Format) -> &'static str {
    match f {
        Format::Qcow2 => "http://www.gnome.org/~markmc/qcow-image-format.html",
        Format::Vhdx => "https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-vhdx",
        Format::Raw => "urn:cosnap:disk-format:raw",
    }
}

fn prop_u64(inst: &Instance, name: &str) -> Option<u64> {
    inst.get(name).and_then(|v| v.as_u64())
}

fn prop_str(inst: &Instance, name: &str) -> Option<String> {
    match inst.get(name)? {
        cosnap_cim::Value::Array(a) => a.first().and_then(|v| v.as_str()).map(str::to_string),
        v => v.as_str().map(str::to_string),
    }
}

/// RASD child elements, given in any order; written alphabetically as the CIM schema wants.
fn item(out: &mut String, mut fields: Vec<(&str, String)>) {
    fields.sort_by(|a, b| a.0.cmp(b.0));
    out.push_str("        <Item>\n");
    for (k, v) in fields {
        let _ = writeln!(out, "          <rasd:{k}>{}</rasd:{k}>", esc(&v));
    }
    out.push_str("        </Item>\n");
}

fn nic_network(inst: &Instance) -> String {
    prop_str(inst, "Connection")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// The descriptor text.
pub fn descriptor(
    collection_id: &str,
    collection_name: &str,
    snapshot_name: &str,
    vms: &[OvfVm],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    let _ = writeln!(
        s,
        "<Envelope xmlns=\"{OVF_NS}\" xmlns:ovf=\"{OVF_NS}\" xmlns:rasd=\"{RASD_NS}\" xmlns:vssd=\"{VSSD_NS}\" xml:lang=\"en-US\">"
    );

    write_references(&mut s, vms);
    write_disk_section(&mut s, vms);
    write_network_section(&mut s, vms);

    let _ = writeln!(
        s,
        "  <VirtualSystemCollection ovf:id=\"{}\">",
        esc(collection_id)
    );
    let _ = writeln!(
        s,
        "    <Info>VM collection {} at snapshot {}</Info>",
        esc(collection_name),
        esc(snapshot_name)
    );
    let _ = writeln!(s, "    <Name>{}</Name>", esc(collection_name));
    for vm in vms {
        write_virtual_system(&mut s, vm);
    }
    s.push_str("  </VirtualSystemCollection>\n</Envelope>\n");
    s
}

/// `References`: one `File` per disk that has an exported file.
fn write_references(s: &mut String, vms: &[OvfVm]) {
    s.push_str("  <References>\n");
    for d in vms.iter().flat_map(|v| &v.disks) {
        if let Some(f) = &d.file {
            let _ = writeln!(
                s,
                "    <File ovf:id=\"{}\" ovf:href=\"{}\" ovf:size=\"{}\"/>",
                esc(&f.file_id),
                esc(&href_encode(&f.rel_path)),
                f.size
            );
        }
    }
    s.push_str("  </References>\n");
}

/// `DiskSection`: one `Disk` per disk of every VM, with its capacity and format.
fn write_disk_section(s: &mut String, vms: &[OvfVm]) {
    s.push_str("  <DiskSection>\n    <Info>Virtual disks of the exported collection</Info>\n");
    for d in vms.iter().flat_map(|v| &v.disks) {
        let file_ref = d
            .file
            .as_ref()
            .map(|f| format!(" ovf:fileRef=\"{}\"", esc(&f.file_id)))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "    <Disk ovf:diskId=\"{}\"{file_ref} ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"byte\" ovf:format=\"{}\"/>",
            esc(&d.disk_id),
            d.capacity,
            format_uri(d.format)
        );
    }
    s.push_str("  </DiskSection>\n");
}

/// `NetworkSection`, only when some VM has a NIC: one `Network` per distinct connection.
fn write_network_section(s: &mut String, vms: &[OvfVm]) {
    let networks: BTreeSet<String> = vms
        .iter()
        .flat_map(|v| v.resources.iter())
        .filter(|r| prop_u64(r, "ResourceType") == Some(10))
        .map(nic_network)
        .collect();
    if networks.is_empty() {
        return;
    }

    s.push_str("  <NetworkSection>\n    <Info>Networks the VMs' adapters connect to</Info>\n");
    for n in &networks {
        let _ = writeln!(
            s,
            "    <Network ovf:name=\"{}\">\n      <Description>{}</Description>\n    </Network>",
            esc(n),
            esc(n)
        );
    }
    s.push_str("  </NetworkSection>\n");
}

/// One `VirtualSystem`: its `System` (VSSD) and RASD items for CPUs, memory, NICs, disks.
fn write_virtual_system(s: &mut String, vm: &OvfVm) {
    let _ = writeln!(s, "    <VirtualSystem ovf:id=\"{}\">", esc(&vm.id));
    let _ = writeln!(s, "      <Info>Virtual machine {}</Info>", esc(&vm.name));
    let _ = writeln!(s, "      <Name>{}</Name>", esc(&vm.name));
    s.push_str(
        "      <VirtualHardwareSection>\n        <Info>Virtual hardware at the snapshot</Info>\n",
    );
    write_system(s, vm);

    let mut ids = ItemIds::default();
    write_cpu_items(s, vm, &mut ids);
    write_memory_items(s, vm, &mut ids);
    write_nic_items(s, vm, &mut ids);
    write_disk_items(s, vm, &mut ids);
    s.push_str("      </VirtualHardwareSection>\n    </VirtualSystem>\n");
}

/// The VSSD `System` element of a VM's hardware section.
fn write_system(s: &mut String, vm: &OvfVm) {
    s.push_str("        <System>\n");
    let _ = writeln!(
        s,
        "          <vssd:ElementName>{}</vssd:ElementName>",
        esc(&vm.name)
    );
    s.push_str("          <vssd:InstanceID>0</vssd:InstanceID>\n");
    let _ = writeln!(
        s,
        "          <vssd:VirtualSystemIdentifier>{}</vssd:VirtualSystemIdentifier>",
        esc(&vm.id)
    );
    s.push_str("          <vssd:VirtualSystemType>cosnap-hyperv-v2</vssd:VirtualSystemType>\n");
    s.push_str("        </System>\n");
}

/// The `InstanceID`s of one VM's RASD items: 1, 2, 3, … in the order items are written.
#[derive(Default)]
struct ItemIds(u32);

impl ItemIds {
    fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

/// The VM's resources of one RASD `ResourceType`.
fn resources_of(vm: &OvfVm, resource_type: u64) -> impl Iterator<Item = &Instance> {
    vm.resources
        .iter()
        .filter(move |r| prop_u64(r, "ResourceType") == Some(resource_type))
}

/// RASD items of ResourceType 3 (processor).
fn write_cpu_items(s: &mut String, vm: &OvfVm, ids: &mut ItemIds) {
    for r in resources_of(vm, 3) {
        let n = prop_u64(r, "VirtualQuantity").unwrap_or(1);
        item(
            s,
            vec![
                ("AllocationUnits", "hertz * 10^6".into()),
                ("Description", "Number of virtual CPUs".into()),
                ("ElementName", format!("{n} virtual CPU(s)")),
                ("InstanceID", ids.next()),
                ("ResourceType", "3".into()),
                ("VirtualQuantity", n.to_string()),
            ],
        );
    }
}

/// RASD items of ResourceType 4 (memory), in the units the settings give.
fn write_memory_items(s: &mut String, vm: &OvfVm, ids: &mut ItemIds) {
    for r in resources_of(vm, 4) {
        let n = prop_u64(r, "VirtualQuantity").unwrap_or(0);
        let units = prop_str(r, "AllocationUnits")
            .filter(|u| !u.is_empty())
            .map(|u| u.replace("byte*2^20", "byte * 2^20"))
            .unwrap_or_else(|| "byte * 2^20".into());
        item(
            s,
            vec![
                ("AllocationUnits", units),
                ("Description", "Memory size".into()),
                ("ElementName", format!("{n} MB of memory")),
                ("InstanceID", ids.next()),
                ("ResourceType", "4".into()),
                ("VirtualQuantity", n.to_string()),
            ],
        );
    }
}

/// RASD items of ResourceType 10 (Ethernet adapter), with the MAC address when set.
fn write_nic_items(s: &mut String, vm: &OvfVm, ids: &mut ItemIds) {
    for r in resources_of(vm, 10) {
        let mut f = vec![
            ("AutomaticAllocation", "true".into()),
            ("Connection", nic_network(r)),
            (
                "ElementName",
                prop_str(r, "ElementName").unwrap_or_else(|| "Network adapter".into()),
            ),
            ("InstanceID", ids.next()),
            ("ResourceType", "10".into()),
        ];
        if let Some(mac) = prop_str(r, "Address").filter(|a| !a.is_empty()) {
            f.push(("Address", mac));
        }
        item(s, f);
    }
}

/// RASD items of ResourceType 17 (disk drive), each pointing at its `DiskSection` disk.
fn write_disk_items(s: &mut String, vm: &OvfVm, ids: &mut ItemIds) {
    for d in &vm.disks {
        item(
            s,
            vec![
                ("ElementName", d.element_name.clone()),
                ("HostResource", format!("ovf:/disk/{}", d.disk_id)),
                ("InstanceID", ids.next()),
                ("ResourceType", "17".into()),
            ],
        );
    }
}

/// Structural checks of a descriptor beyond XSD validity: the envelope namespace, one
/// `VirtualSystemCollection` content, unique file and disk ids, every `fileRef` and
/// `ovf:/disk/` reference resolves, every referenced file exists under `root` with its
/// declared size, every VM has CPU and memory items, RASD children in schema order.
/// `size_of(rel)` gives a package file's size (the caller reads through its directory
/// handle). The text goes through `cosnap-cim`'s bounded XML reader.
pub fn check_structure(
    text: &str,
    size_of: &dyn Fn(&str) -> Result<u64, String>,
) -> Result<(), String> {
    let doc = cosnap_cim::xml::parse_document(text).map_err(|e| e.to_string())?;
    let env = doc.root_element();
    if env.tag_name().name() != "Envelope" || env.tag_name().namespace() != Some(OVF_NS) {
        return Err(format!("root element is not an OVF 2 Envelope ({OVF_NS})"));
    }

    let references = check_envelope_sections(env)?;
    let files = check_files(references, size_of)?;
    let disks = check_disks(&doc, &files)?;
    check_virtual_systems(&doc, &disks)
}

/// An `ovf:` attribute of an element.
fn ovf_attr(n: Node<'_, '_>, name: &str) -> Option<String> {
    n.attribute((OVF_NS, name)).map(str::to_string)
}

/// The envelope starts with `References` and holds exactly one `VirtualSystemCollection`
/// as its content; returns the `References` element.
fn check_envelope_sections<'a, 'i>(env: Node<'a, 'i>) -> Result<Node<'a, 'i>, String> {
    let kids: Vec<_> = env.children().filter(|c| c.is_element()).collect();
    if kids.first().map(|k| k.tag_name().name()) != Some("References") {
        return Err("Envelope must start with References".into());
    }

    let contents: Vec<_> = kids
        .iter()
        .filter(|k| {
            matches!(
                k.tag_name().name(),
                "VirtualSystem" | "VirtualSystemCollection"
            )
        })
        .collect();
    if contents.len() != 1 || contents[0].tag_name().name() != "VirtualSystemCollection" {
        return Err("Envelope must hold exactly one VirtualSystemCollection".into());
    }
    Ok(kids[0])
}

/// Every `File` has a unique id and an href inside the package to a file of its declared
/// size; returns the file ids.
fn check_files(
    references: Node<'_, '_>,
    size_of: &dyn Fn(&str) -> Result<u64, String>,
) -> Result<BTreeSet<String>, String> {
    let mut files = BTreeSet::new();
    for f in references
        .children()
        .filter(|c| c.has_tag_name((OVF_NS, "File")))
    {
        let id = ovf_attr(f, "id").ok_or("File without ovf:id")?;
        let href = ovf_attr(f, "href").ok_or("File without ovf:href")?;
        let rel = href_decode(&href).ok_or_else(|| format!("bad href {href:?}"))?;
        if rel.is_empty()
            || rel.starts_with('/')
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == ".." || c == ".")
        {
            return Err(format!("href {href:?} leaves the package"));
        }

        let len = size_of(&rel).map_err(|e| format!("file {rel:?}: {e}"))?;
        if let Some(size) = ovf_attr(f, "size")
            && size.parse::<u64>().ok() != Some(len)
        {
            return Err(format!(
                "file {rel:?}: ovf:size {size} but the file has {len} bytes"
            ));
        }

        if !files.insert(id.clone()) {
            return Err(format!("duplicate File id {id}"));
        }
    }
    Ok(files)
}

/// Every `Disk` has a unique id and a capacity, and its `fileRef` names a known file;
/// returns the disk ids.
fn check_disks(doc: &Document<'_>, files: &BTreeSet<String>) -> Result<BTreeSet<String>, String> {
    let mut disks = BTreeSet::new();
    for d in doc
        .descendants()
        .filter(|n| n.has_tag_name((OVF_NS, "Disk")))
    {
        let id = ovf_attr(d, "diskId").ok_or("Disk without ovf:diskId")?;
        ovf_attr(d, "capacity").ok_or_else(|| format!("disk {id} without ovf:capacity"))?;
        if let Some(r) = ovf_attr(d, "fileRef")
            && !files.contains(&r)
        {
            return Err(format!("disk {id} refers to unknown file {r}"));
        }
        if !disks.insert(id.clone()) {
            return Err(format!("duplicate diskId {id}"));
        }
    }
    Ok(disks)
}

/// There is at least one `VirtualSystem`, and each has well-formed RASD items including
/// CPU (3) and memory (4).
fn check_virtual_systems(doc: &Document<'_>, disks: &BTreeSet<String>) -> Result<(), String> {
    let systems: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name((OVF_NS, "VirtualSystem")))
        .collect();
    if systems.is_empty() {
        return Err("collection holds no VirtualSystem".into());
    }

    for vs in systems {
        let vid = ovf_attr(vs, "id").ok_or("VirtualSystem without ovf:id")?;
        let mut types = BTreeSet::new();
        for it in vs
            .descendants()
            .filter(|n| n.has_tag_name((OVF_NS, "Item")))
        {
            types.insert(check_item(&vid, it, disks)?);
        }
        for needed in [3, 4] {
            if !types.contains(&needed) {
                return Err(format!("{vid}: no RASD item of ResourceType {needed}"));
            }
        }
    }
    Ok(())
}

/// One RASD `Item` of VM `vid`: children in schema order, a `ResourceType`, and for disk
/// items (17) a `HostResource` naming a known disk. Returns the resource type.
fn check_item(vid: &str, it: Node<'_, '_>, disks: &BTreeSet<String>) -> Result<u32, String> {
    let names: Vec<&str> = it
        .children()
        .filter(|c| c.is_element())
        .map(|c| c.tag_name().name())
        .collect();
    if names.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!(
            "{vid}: RASD elements out of schema order: {names:?}"
        ));
    }

    let rt = it
        .children()
        .find(|c| c.has_tag_name((RASD_NS, "ResourceType")))
        .and_then(|c| c.text());
    let rt: u32 = rt
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("{vid}: Item without ResourceType"))?;
    if rt != 17 {
        return Ok(rt);
    }

    let hr = it
        .children()
        .find(|c| c.has_tag_name((RASD_NS, "HostResource")))
        .and_then(|c| c.text())
        .unwrap_or_default();
    let id = hr
        .strip_prefix("ovf:/disk/")
        .ok_or_else(|| format!("{vid}: disk item HostResource {hr:?}"))?;
    if !disks.contains(id) {
        return Err(format!("{vid}: disk item refers to unknown disk {id}"));
    }
    Ok(rt)
}
