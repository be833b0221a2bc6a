//! The enums the JavaScript API shares with TypeScript, each listed once, here, against the Rust
//! type it stands for.
//!
//! [`JsEnum`] gives every member of a Rust enum its JavaScript value: the member name for the
//! API's string enums (`RamVisibility.ReadOnly === 'ReadOnly'`), the number for `Vtl`, a fixed
//! spelling for the string unions (`handlerStatus()` returns `'not-installed'`). The macros below
//! write the conversions as exhaustive `match`es over the Rust type, so adding a Rust variant
//! does not compile until it is listed here; `crate::typescript` then writes the TypeScript
//! declarations (`ts/generated/enums.ts`), and a test fails while that file is out of date.
//!
//! The binding converts with [`JsEnum::from_js`] and [`JsEnum::js_value`] and never spells a
//! value itself.

use serde::Serialize;
use serde::Serializer;

/// A JavaScript value of an enum member.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum JsValue {
    /// A string (`'ReadOnly'`, `'not-installed'`).
    Str(&'static str),
    /// A number (`Vtl.Vtl2 === 2`).
    Number(u8),
}

/// How TypeScript declares an enum.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum Form {
    /// A runtime `enum` whose members are the Rust variant names.
    Enum,
    /// A union of string literals, with a runtime array of them.
    Union,
}

/// A Rust enum with a JavaScript spelling of every member.
pub trait JsEnum: Copy + PartialEq + Sized + 'static {
    /// The TypeScript name.
    const TS_NAME: &'static str;
    /// The TypeScript doc comment (one sentence).
    const DOC: &'static str;
    /// How TypeScript declares it.
    const FORM: Form;

    /// Every member, in declaration order.
    fn members() -> &'static [Self];

    /// The member's TypeScript name (`Form::Enum`) or its literal (`Form::Union`).
    fn member_name(self) -> &'static str;

    /// The member's JavaScript value.
    fn js_value(self) -> JsValue;

    /// The member whose JavaScript value is `value`.
    fn from_js(value: JsValue) -> Option<Self> {
        Self::members()
            .iter()
            .copied()
            .find(|member| member.js_value() == value)
    }

    /// The member whose JavaScript value is the string `value`.
    fn from_js_str(value: &str) -> Option<Self> {
        Self::members()
            .iter()
            .copied()
            .find(|member| matches!(member.js_value(), JsValue::Str(name) if name == value))
    }

    /// The string value of a string enum or union member.
    fn js_str(self) -> &'static str {
        match self.js_value() {
            JsValue::Str(value) => value,
            JsValue::Number(_) => self.member_name(),
        }
    }

    /// Every value, for error messages: `'Unmapped', 'ReadOnly' or 'ReadWrite'`.
    fn describe_values() -> String {
        let values: Vec<String> = Self::members()
            .iter()
            .map(|member| match member.js_value() {
                JsValue::Str(value) => format!("'{value}'"),
                JsValue::Number(value) => value.to_string(),
            })
            .collect();
        match values.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

/// Serializes a member as its JavaScript value (for JSON views).
pub fn serialize_js<E: JsEnum, S: Serializer>(
    member: &E,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match member.js_value() {
        JsValue::Str(value) => serializer.serialize_str(value),
        JsValue::Number(value) => serializer.serialize_u8(value),
    }
}

/// A string enum whose values are its member names.
macro_rules! string_enum {
    ($ty:ty, $name:literal, $doc:literal, { $($variant:ident),+ $(,)? }) => {
        impl JsEnum for $ty {
            const TS_NAME: &'static str = $name;
            const DOC: &'static str = $doc;
            const FORM: Form = Form::Enum;
            fn members() -> &'static [Self] {
                &[$(Self::$variant),+]
            }
            fn member_name(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant)),+
                }
            }
            fn js_value(self) -> JsValue {
                JsValue::Str(self.member_name())
            }
        }
    };
}

/// A union of string literals spelled differently from the Rust variants.
macro_rules! string_union {
    ($ty:ty, $name:literal, $doc:literal, { $($variant:ident = $value:literal),+ $(,)? }) => {
        impl JsEnum for $ty {
            const TS_NAME: &'static str = $name;
            const DOC: &'static str = $doc;
            const FORM: Form = Form::Union;
            fn members() -> &'static [Self] {
                &[$(Self::$variant),+]
            }
            fn member_name(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),+
                }
            }
            fn js_value(self) -> JsValue {
                JsValue::Str(self.member_name())
            }
        }
    };
}

pub(crate) use string_union;

string_enum!(membacking::RamVisibility, "RamVisibility", "RAM region visibility (values are the names).", {
    Unmapped, ReadOnly, ReadWrite,
});

string_enum!(vm_topology::memory::AddressType, "AddressType", "What probeAddress found.", { Ram, Mmio });

impl JsEnum for virt::Vtl {
    const TS_NAME: &'static str = "Vtl";
    const DOC: &'static str = "Virtual trust level (the architectural numbers).";
    const FORM: Form = Form::Enum;
    fn members() -> &'static [Self] {
        &[Self::Vtl0, Self::Vtl1, Self::Vtl2]
    }
    fn member_name(self) -> &'static str {
        match self {
            Self::Vtl0 => "Vtl0",
            Self::Vtl1 => "Vtl1",
            Self::Vtl2 => "Vtl2",
        }
    }
    fn js_value(self) -> JsValue {
        JsValue::Number(u8::from(self))
    }
}

/// Which input covers a piece of `walk_ranges` (the variant of `RangeWalkResult`, without its
/// tags).
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum RangeWalkKind {
    /// Neither input.
    Neither,
    /// The left input only.
    Left,
    /// The right input only.
    Right,
    /// Both inputs.
    Both,
}

impl RangeWalkKind {
    /// The kind of a walk result.
    pub fn of<T, U>(result: &memory_range::RangeWalkResult<T, U>) -> Self {
        use memory_range::RangeWalkResult;
        match result {
            RangeWalkResult::Neither => Self::Neither,
            RangeWalkResult::Left(_) => Self::Left,
            RangeWalkResult::Right(_) => Self::Right,
            RangeWalkResult::Both(_, _) => Self::Both,
        }
    }
}

string_enum!(RangeWalkKind, "RangeWalkKind", "Which input covers a walk piece.", {
    Neither, Left, Right, Both,
});

/// `guestmem::GuestMemoryErrorKind` is `#[non_exhaustive]`, so no `match` outside its crate can
/// be exhaustive: the members are listed here and a test checks each against the kind's own
/// `name()`.
impl JsEnum for guestmem::GuestMemoryErrorKind {
    const TS_NAME: &'static str = "GuestMemoryErrorKind";
    const DOC: &'static str = "Upstream error kinds of guest memory (values are the names).";
    const FORM: Form = Form::Enum;
    fn members() -> &'static [Self] {
        &[
            Self::Other,
            Self::OutOfRange,
            Self::VtlProtected,
            Self::NotPrivate,
            Self::NotShared,
        ]
    }
    fn member_name(self) -> &'static str {
        self.name()
    }
    fn js_value(self) -> JsValue {
        JsValue::Str(self.name())
    }
}

string_union!(trycopy::HandlerStatus, "HandlerStatus", "State of the fault handler among the signal dispositions.", {
    Installed = "installed",
    Displaced = "displaced",
    Default = "default",
    NotInstalled = "not-installed",
});

string_union!(virt::RecordedOp, "RecordedOp", "A partition call as a recording partition logs it.", {
    Map = "map",
    Unmap = "unmap",
    Prefetch = "prefetch",
    Pin = "pin",
});

string_union!(membacking::snapshot::RestoreMode, "RestoreMode", "How a restore fills guest RAM: all at once, or on first touch and in the background.", {
    Copy = "copy",
    Lazy = "lazy",
});

string_union!(membacking::PreviewStepKind, "PlannedOpKind", "What a planned operation does.", {
    Invalidate = "invalidate",
    Map = "map",
    Unmap = "unmap",
    Prefetch = "prefetch",
    Pin = "pin",
});

/// The signal of a recovered fault, as `FaultInfo.signal` names it.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum FaultSignal {
    /// A segmentation fault.
    Segv,
    /// A bus error (a file view beyond the end of its file).
    Bus,
    /// An illegal instruction.
    Ill,
}

impl FaultSignal {
    /// The signal named by a signal number, if it is one of the three.
    pub fn of(signal: i32) -> Option<Self> {
        match signal {
            libc::SIGSEGV => Some(Self::Segv),
            libc::SIGBUS => Some(Self::Bus),
            libc::SIGILL => Some(Self::Ill),
            _ => None,
        }
    }
}

string_union!(FaultSignal, "FaultSignal", "The signal of a recovered fault.", {
    Segv = "SIGSEGV",
    Bus = "SIGBUS",
    Ill = "SIGILL",
});

#[cfg(target_arch = "x86_64")]
mod kvm {
    use super::*;

    string_enum!(virt_kvm::VcpuMode, "VcpuMode", "Execution mode a vCPU starts in.", { Real, Long });

    string_union!(virt_kvm::CancelReason, "CancelReason", "Why a run was cancelled.", {
        Cancel = "cancel",
        Timeout = "timeout",
    });

    string_union!(virt_kvm::SlotOp, "SlotOp", "A KVM partition call that changes memory slots.", {
        Map = "map",
        Unmap = "unmap",
    });

    /// The kind of a vCPU exit (the variant of `virt_kvm::VcpuExit`, without its data).
    #[derive(Debug, Copy, Clone, PartialEq, Eq)]
    pub enum VcpuExitKind {
        /// An MMIO read waiting for its value.
        MmioRead,
        /// An MMIO write.
        MmioWrite,
        /// A port input waiting for its value.
        IoIn,
        /// A port output.
        IoOut,
        /// `hlt`.
        Hlt,
        /// A triple fault or similar.
        Shutdown,
        /// Cancelled or timed out.
        Cancelled,
        /// `KVM_RUN` failed.
        Failure,
    }

    impl VcpuExitKind {
        /// The kind of an exit.
        pub fn of(exit: &virt_kvm::VcpuExit) -> Self {
            use virt_kvm::VcpuExit;
            match exit {
                VcpuExit::MmioRead { .. } => Self::MmioRead,
                VcpuExit::MmioWrite { .. } => Self::MmioWrite,
                VcpuExit::IoIn { .. } => Self::IoIn,
                VcpuExit::IoOut { .. } => Self::IoOut,
                VcpuExit::Hlt => Self::Hlt,
                VcpuExit::Shutdown => Self::Shutdown,
                VcpuExit::Cancelled(_) => Self::Cancelled,
                VcpuExit::Failure { .. } => Self::Failure,
            }
        }
    }

    string_union!(VcpuExitKind, "VcpuExitKind", "Why a vCPU run settled.", {
        MmioRead = "MmioRead",
        MmioWrite = "MmioWrite",
        IoIn = "IoIn",
        IoOut = "IoOut",
        Hlt = "Hlt",
        Shutdown = "Shutdown",
        Cancelled = "Cancelled",
        Failure = "Failure",
    });
}

#[cfg(target_arch = "x86_64")]
pub use kvm::VcpuExitKind;

/// A JSON field holding an enum member's JavaScript value.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct Js<E>(pub E);

impl<E: JsEnum> Serialize for Js<E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_js(&self.0, serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<E: JsEnum + std::fmt::Debug>() {
        for &member in E::members() {
            assert_eq!(
                E::from_js(member.js_value()),
                Some(member),
                "{}",
                E::TS_NAME
            );
        }
        let mut values: Vec<_> = E::members().iter().map(|m| m.js_value()).collect();
        values.dedup();
        assert_eq!(
            values.len(),
            E::members().len(),
            "{}: values are distinct",
            E::TS_NAME
        );
    }

    #[test]
    fn every_member_round_trips_through_its_javascript_value() {
        round_trips::<membacking::RamVisibility>();
        round_trips::<vm_topology::memory::AddressType>();
        round_trips::<virt::Vtl>();
        round_trips::<RangeWalkKind>();
        round_trips::<guestmem::GuestMemoryErrorKind>();
        round_trips::<trycopy::HandlerStatus>();
        round_trips::<virt::RecordedOp>();
        round_trips::<membacking::PreviewStepKind>();
        round_trips::<FaultSignal>();
        #[cfg(target_arch = "x86_64")]
        {
            round_trips::<virt_kvm::VcpuMode>();
            round_trips::<virt_kvm::CancelReason>();
            round_trips::<virt_kvm::SlotOp>();
            round_trips::<VcpuExitKind>();
        }
    }

    #[test]
    fn values_are_the_ones_the_api_fixes() {
        assert_eq!(
            membacking::RamVisibility::ReadOnly.js_value(),
            JsValue::Str("ReadOnly")
        );
        assert_eq!(virt::Vtl::Vtl2.js_value(), JsValue::Number(2));
        assert_eq!(
            virt::Vtl::from_js(JsValue::Number(1)),
            Some(virt::Vtl::Vtl1)
        );
        assert_eq!(virt::Vtl::from_js(JsValue::Number(3)), None);
        assert_eq!(
            trycopy::HandlerStatus::NotInstalled.js_str(),
            "not-installed"
        );
        assert_eq!(
            membacking::RamVisibility::from_js_str("Hidden"),
            None,
            "an unknown name is no member"
        );
        assert_eq!(
            membacking::RamVisibility::describe_values(),
            "'Unmapped', 'ReadOnly' or 'ReadWrite'"
        );
        assert_eq!(virt::Vtl::describe_values(), "0, 1 or 2");
    }

    #[test]
    fn guest_memory_error_kinds_are_guestmems_own_names() {
        use guestmem::GuestMemoryErrorKind;
        let names: Vec<_> = GuestMemoryErrorKind::members()
            .iter()
            .map(|kind| kind.name())
            .collect();
        assert_eq!(
            names,
            [
                "Other",
                "OutOfRange",
                "VtlProtected",
                "NotPrivate",
                "NotShared"
            ]
        );
    }

    #[test]
    fn fault_signals_are_named_by_their_linux_numbers() {
        assert_eq!(FaultSignal::of(libc::SIGSEGV), Some(FaultSignal::Segv));
        assert_eq!(FaultSignal::of(libc::SIGBUS), Some(FaultSignal::Bus));
        assert_eq!(FaultSignal::of(libc::SIGILL), Some(FaultSignal::Ill));
        assert_eq!(FaultSignal::of(libc::SIGTRAP), None);
        assert_eq!(FaultSignal::Bus.js_str(), "SIGBUS");
    }
}
