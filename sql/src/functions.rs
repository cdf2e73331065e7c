//! Functions Sediment adds to DataFusion's, for Postgres compatibility.
//!
//! - `octet_length(bytea)`: Postgres takes `bytea` and text; DataFusion's
//!   takes text only, and `length(bytea)` casts to UTF-8 and counts
//!   characters. Raw topic values and keys are `bytea`, and their size is
//!   the first thing analysts ask for, so it must be cheap: the lengths
//!   come from the array's offsets, nothing is decoded.

use datafusion::arrow::array::Array;
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// `octet_length(text | bytea)`: bytes, not characters (int4; int8 for
/// the large variants).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct OctetLength {
    signature: Signature,
}

impl OctetLength {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::from(OctetLength {
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for OctetLength {
    fn name(&self) -> &str {
        "octet_length"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args.first() {
            Some(DataType::LargeUtf8 | DataType::LargeBinary) => Ok(DataType::Int64),
            Some(
                DataType::Utf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::BinaryView
                | DataType::Null,
            ) => Ok(DataType::Int32),
            Some(other) => plan_err!("octet_length takes text or bytea, not {other}"),
            None => plan_err!("octet_length takes one argument"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(arg) = args.args.into_iter().next() else {
            return plan_err!("octet_length takes one argument");
        };
        match arg {
            ColumnarValue::Array(a) if a.data_type() == &DataType::Null => {
                Ok(ColumnarValue::Scalar(ScalarValue::Int32(None)))
            }
            ColumnarValue::Array(a) => Ok(ColumnarValue::Array(length(a.as_ref())?)),
            ColumnarValue::Scalar(s) if s.is_null() => Ok(ColumnarValue::Scalar(
                ScalarValue::try_from(args.return_field.data_type())?,
            )),
            ColumnarValue::Scalar(s) => {
                let lengths = length(s.to_array()?.as_ref())?;
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                    lengths.as_ref(),
                    0,
                )?))
            }
        }
    }
}
