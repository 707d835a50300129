//! Msvm_ConcreteJob's methods: RequestStateChange, GetError, GetErrorEx, KillJob
//! (the CIM_ConcreteJob return-code family).

use cosnap_cim::{CimError, CimStatus, MethodOutcome, ObjectPath, Value};

use super::params::*;
use crate::error::{concrete_job, msvm};
use crate::host::Host;

impl Host {
    /// A method of the job `target` names (`m` is the method name in lower case).
    pub(super) fn job_method(
        &self,
        target: &ObjectPath,
        method: &str,
        m: &str,
        params: &[(String, Value)],
    ) -> Result<MethodOutcome, CimError> {
        let id = target
            .key_str("InstanceID")
            .ok_or_else(|| CimError::invalid_parameter("job path lacks InstanceID"))?;
        let job = self.job(id).map_err(|e| e.to_cim())?;
        match m {
            "requeststatechange" => {
                let state = uint_param(params, "RequestedState").map_err(|e| e.to_cim())?;
                if let Some(Value::Datetime(t) | Value::String(t)) = param(params, "TimeoutPeriod")
                    && !t.trim().is_empty()
                    && t.chars().any(|c| c.is_ascii_digit() && c != '0')
                {
                    return Ok(outcome(concrete_job::TIMEOUT_NOT_SUPPORTED));
                }
                let Some(state) = state.and_then(|s| u16::try_from(s).ok()) else {
                    return Ok(outcome(concrete_job::INVALID_PARAMETER));
                };
                Ok(outcome(
                    self.request_job_state(&job.id, state)
                        .map_err(|e| e.to_cim())?,
                ))
            }
            // Null (the out parameter left out) when the job did not fail (doc: "Null
            // when OperationalStatus is 2 (OK)").
            "geterror" => Ok(MethodOutcome {
                return_value: msvm::COMPLETED,
                out_params: self
                    .job_error_instance(&job)
                    .map(|i| ("Error".to_string(), Value::Instance(Box::new(i))))
                    .into_iter()
                    .collect(),
            }),
            "geterrorex" => Ok(MethodOutcome {
                return_value: msvm::COMPLETED,
                out_params: self
                    .job_error_instance(&job)
                    .map(|i| {
                        (
                            "Errors".to_string(),
                            Value::Array(vec![Value::Instance(Box::new(i))]),
                        )
                    })
                    .into_iter()
                    .collect(),
            }),
            "killjob" => Ok(outcome(concrete_job::NOT_SUPPORTED)),
            _ => Err(CimError::new(
                CimStatus::MethodNotFound,
                format!("Msvm_ConcreteJob has no method {method}"),
            )),
        }
    }
}
