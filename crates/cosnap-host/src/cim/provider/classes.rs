//! Which classes the host serves, which repository rows own each class's instances, and
//! how those rows are read in pages.

use cosnap_cim::schema;

use crate::cim::SERVICES;

/// Classes whose instances the host serves directly (associations included).
pub(super) const CONCRETE: &[&str] = &[
    "Msvm_ComputerSystem",
    "Msvm_VirtualSystemSettingData",
    "Msvm_ProcessorSettingData",
    "Msvm_MemorySettingData",
    "Msvm_StorageAllocationSettingData",
    "Msvm_SyntheticEthernetPortSettingData",
    "Msvm_EthernetPortAllocationSettingData",
    "Msvm_SerialPortSettingData",
    "Msvm_VirtualSystemReferencePoint",
    "Msvm_VirtualSystemCollection",
    "Msvm_ManagementCollection",
    "Msvm_SnapshotCollection",
    "Msvm_ReferencePointCollection",
    "Msvm_ConcreteJob",
    "Msvm_CollectionManagementService",
    "Msvm_CollectionSnapshotService",
    "Msvm_CollectionReferencePointService",
    "Msvm_VirtualSystemManagementService",
    "Msvm_CollectedVirtualSystems",
    "Msvm_CollectedCollections",
    "Msvm_CollectedSnapshots",
    "Msvm_CollectedReferencePoints",
    "Msvm_SnapshotOfVirtualSystemCollection",
    "Msvm_ReferencePointOfVirtualSystemCollection",
    "Msvm_SnapshotOfVirtualSystem",
    "Msvm_ReferencePointOfVirtualSystem",
    "Msvm_AffectedJobElement",
    "Msvm_SettingsDefineState",
    "Msvm_VirtualSystemSettingDataComponent",
];

/// The owner tables of exactly `class`, in the order its instances are enumerated.
pub(super) fn owners_of(class: &str) -> &'static [Owners] {
    match class {
        "Msvm_ComputerSystem" | "Msvm_SettingsDefineState" => &[Owners::Vms],
        "Msvm_SnapshotCollection"
        | "Msvm_CollectedSnapshots"
        | "Msvm_SnapshotOfVirtualSystemCollection"
        | "Msvm_SnapshotOfVirtualSystem" => &[Owners::Snapshots],
        "Msvm_VirtualSystemReferencePoint"
        | "Msvm_ReferencePointCollection"
        | "Msvm_CollectedReferencePoints"
        | "Msvm_ReferencePointOfVirtualSystemCollection"
        | "Msvm_ReferencePointOfVirtualSystem" => &[Owners::RefPoints],
        "Msvm_VirtualSystemCollection"
        | "Msvm_ManagementCollection"
        | "Msvm_CollectedVirtualSystems"
        | "Msvm_CollectedCollections" => &[Owners::Collections],
        "Msvm_ConcreteJob" | "Msvm_AffectedJobElement" => &[Owners::Jobs],
        c if SERVICES.iter().any(|(s, _)| *s == c) => &[Owners::Host],
        // The VSSDs, their resource settings and the association between them belong to
        // VMs (current settings) and snapshots (frozen settings).
        _ => &[Owners::Vms, Owners::Snapshots],
    }
}

pub(super) fn is_a(sub: &str, sup: &str) -> bool {
    sub.eq_ignore_ascii_case(sup) || schema().is_subclass(sub, sup)
}

/// A repository table whose rows own instances, or the host itself (its services).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owners {
    Vms,
    Snapshots,
    RefPoints,
    Collections,
    Jobs,
    Host,
}

impl Owners {
    /// The next rows after `after` in enumeration order (index on `seq`, migration 6).
    pub(super) fn page_sql(self) -> Option<&'static str> {
        Some(match self {
            Owners::Vms => "SELECT seq, id FROM vms WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            Owners::Snapshots => {
                "SELECT seq, id FROM snapshots WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            }
            Owners::RefPoints => {
                "SELECT seq, id FROM refpoints WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            }
            Owners::Collections => {
                "SELECT seq, id FROM collections WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            }
            Owners::Jobs => "SELECT seq, id FROM jobs WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            Owners::Host => return None,
        })
    }
}
