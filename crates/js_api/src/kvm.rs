//! What the KVM binding decides besides calling `virt_kvm`: a vCPU's options from its
//! JavaScript arguments, named register updates, and how a run's outcome crosses.

use crate::args::named_values;
use crate::args::one_range;
use crate::args::string_member;
use crate::json::to_json;
use crate::views::VcpuExitView;
use crate::JsError;
use crate::ToJsError;
use virt_kvm::KvmError;
use virt_kvm::Registers;
use virt_kvm::VcpuExit;
use virt_kvm::VcpuMode;
use virt_kvm::VcpuOptions;

/// The options of `createVcpu(mode, pageTables, cpl)`: `mode` a `VcpuMode` value,
/// `page_tables` one `[start, end]` range, `cpl` a byte (the core checks it is 0 or 3, and 0 in
/// Real mode) or the mode's default when not given.
pub fn vcpu_options(
    mode: &str,
    page_tables: Option<&[u64]>,
    cpl: Option<u32>,
) -> Result<VcpuOptions, JsError> {
    let mode = string_member(mode, "mode")?;
    // Not given: Long mode's default, or Real mode's only level.
    let cpl = match (cpl, mode) {
        (Some(cpl), _) => {
            u8::try_from(cpl).map_err(|_| JsError::arg_value("cpl must be 0 or 3"))?
        }
        (None, VcpuMode::Long) => VcpuOptions::default().cpl,
        (None, VcpuMode::Real) => VcpuOptions::real().cpl,
    };
    Ok(VcpuOptions {
        mode,
        page_tables: page_tables
            .map(|bounds| one_range(bounds, "pageTables"))
            .transpose()?,
        cpl,
    })
}

/// The registers `names` set to `values` (checked before anything changes), as an update of
/// the vCPU's registers that leaves the others as they are.
pub fn register_updates<'a>(
    names: &'a [String],
    values: &[u64],
) -> Result<impl FnOnce(&mut Registers) + use<'a>, JsError> {
    let updates = named_values(names, values, &Registers::NAMES)?;
    Ok(move |registers: &mut Registers| {
        for (name, value) in updates {
            if let Some(register) = registers.named(name) {
                *register = value;
            }
        }
    })
}

/// A run's outcome as it settles the Promise: the exit's JSON, the run's error, or `ERR_CLOSED`
/// when the vCPU's thread went away without answering (`None`).
pub fn run_outcome(outcome: Option<Result<VcpuExit, KvmError>>) -> Result<String, JsError> {
    match outcome {
        Some(Ok(exit)) => Ok(to_json(&VcpuExitView::from(&exit))),
        Some(Err(error)) => Err(error.to_js_error()),
        None => Err(JsError::closed("Vcpu")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::ErrorClass;
    use crate::errors::ErrorCode;
    use memory_range::MemoryRange;

    #[test]
    fn vcpu_options_are_read_and_checked() {
        let options = vcpu_options("Long", Some(&[0x1000, 0x7000]), Some(3)).unwrap();
        assert_eq!(options.mode, VcpuMode::Long);
        assert_eq!(options.page_tables, Some(MemoryRange::new(0x1000..0x7000)));
        assert_eq!(options.cpl, 3);
        assert_eq!(
            vcpu_options("Real", None, Some(0)).unwrap().page_tables,
            None
        );
        // Without a cpl: Long mode's default 3, Real mode's 0.
        assert_eq!(vcpu_options("Long", None, None).unwrap().cpl, 3);
        assert_eq!(vcpu_options("Real", None, None).unwrap().cpl, 0);
        let bad_mode = vcpu_options("protected-ish", None, Some(0)).unwrap_err();
        assert_eq!(
            bad_mode.kind().0,
            ErrorClass::RangeError,
            "{}",
            bad_mode.message
        );
        let bad_cpl = vcpu_options("Long", None, Some(256)).unwrap_err();
        assert_eq!(bad_cpl.message, "cpl must be 0 or 3");
        assert!(vcpu_options("Long", Some(&[1, 2, 3]), Some(0)).is_err());
    }

    #[test]
    fn register_updates_change_only_the_named_registers() {
        let mut registers = Registers {
            rbx: 5,
            ..Registers::default()
        };
        let names = ["rax".to_owned(), "rip".to_owned()];
        register_updates(&names, &[1, 0x1000]).unwrap()(&mut registers);
        assert_eq!(
            (registers.rax, registers.rip, registers.rbx),
            (1, 0x1000, 5)
        );
        let unknown = register_updates(&["rzz".to_owned()], &[1]).err().unwrap();
        assert!(
            unknown.message.contains("unknown register 'rzz'"),
            "{}",
            unknown.message
        );
        assert!(
            register_updates(&names, &[1]).is_err(),
            "one value per name"
        );
    }

    #[test]
    fn a_run_outcome_settles_as_json_or_a_coded_error() {
        let gone = run_outcome(None).unwrap_err();
        assert_eq!(
            gone.kind(),
            (ErrorClass::MembackingError, Some(ErrorCode::Closed))
        );
        let busy = run_outcome(Some(Err(KvmError::VcpuBusy))).unwrap_err();
        assert_eq!(
            busy.kind(),
            (ErrorClass::KvmError, Some(ErrorCode::VcpuBusy))
        );
        let refused = virt_kvm::RunRefused::Busy(KvmError::VcpuBusy).to_js_error();
        assert_eq!(refused.kind(), busy.kind());
        let closed = virt_kvm::RunRefused::Closed.to_js_error();
        assert_eq!(closed.message, "Vcpu is closed");
    }
}
