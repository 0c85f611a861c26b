//! binllm._core: the thin PyO3 layer. Each function extracts its arguments, releases the GIL,
//! calls binllm-core and converts the result back. No logic lives here; argument checks that
//! need numpy (dtype, contiguity) are done in python/binllm before calling in.

use binllm_core::kernels::{self, Backend};
use binllm_core::{Error, PackedMatrix, ScaleKind, WeightFormat};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;

create_exception!(binllm, BinllmError, PyException, "Base class of every binllm error.");
create_exception!(binllm, ModelFormatError, BinllmError, "A model or tensor file is malformed.");
create_exception!(binllm, UnsupportedError, BinllmError, "Well-formed input that binllm does not support.");
create_exception!(binllm, BackendError, BinllmError, "A compute backend is unknown or not usable on this CPU.");

/// The one mapping from core errors to Python exceptions.
fn to_py(e: Error) -> PyErr {
    match e {
        Error::InvalidArgument(m) => PyValueError::new_err(m),
        Error::Format(_) => ModelFormatError::new_err(e.to_string()),
        Error::Unsupported(_) => UnsupportedError::new_err(e.to_string()),
        Error::Backend(m) => BackendError::new_err(m),
        Error::Io(io) => PyErr::from(io),
    }
}

fn parse_backend(name: Option<&str>) -> PyResult<Backend> {
    match name {
        None => kernels::active_backend().map_err(to_py),
        Some(n) => {
            let b = Backend::from_name(n).map_err(to_py)?;
            if !b.is_available() {
                return Err(BackendError::new_err(format!("backend '{n}' is not usable on this CPU or build")));
            }
            Ok(b)
        }
    }
}

/// A weight matrix in a packed 1-bit or ternary format.
#[pyclass(name = "PackedMatrix", module = "binllm.kernels", frozen)]
struct PyPackedMatrix {
    inner: PackedMatrix,
}

#[pymethods]
impl PyPackedMatrix {
    /// (N, K): output features, input features.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        self.inner.shape()
    }
    /// Format name: "t2", "t1.6" or "b1".
    #[getter]
    fn format(&self) -> &'static str {
        self.inner.format().name()
    }
    /// True bits per weight: codes, row padding and every stored scale.
    #[getter]
    fn bits_per_weight(&self) -> f64 {
        self.inner.bits_per_weight()
    }
    /// Bytes held by codes and scales.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }
    /// Row length after padding to whole blocks.
    #[getter]
    fn padded_k(&self) -> usize {
        self.inner.padded_k()
    }
    /// The int8 codes, shape (N, K).
    fn unpack<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i8>>> {
        let (n, k) = self.inner.shape();
        let codes = py.detach(|| self.inner.unpack());
        PyArray1::from_vec(py, codes).reshape([n, k])
    }

    /// Y = X W^T with per-token int8 activation quantization. x: float32 (K,) or (M, K).
    #[pyo3(signature = (x, backend=None))]
    fn matmul<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>, backend: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
        let backend = parse_backend(backend)?;
        let x = float32_array(x)?;
        let (m, one_d) = self.input_rows(&x)?;
        let xs = x.as_slice().map_err(|_| PyValueError::new_err("x must be C-contiguous"))?;
        let n = self.inner.rows();
        let mut y = vec![0f32; m * n];
        py.detach(|| self.inner.matmul_into(backend, xs, m, &mut y)).map_err(to_py)?;
        let arr = PyArray1::from_vec(py, y);
        if one_d {
            Ok(arr.into_any())
        } else {
            Ok(arr.reshape([m, n])?.into_any())
        }
    }

    /// Exact integer sums (M, N) of codes with the int8-quantized x, on a chosen backend.
    #[pyo3(signature = (x, backend=None))]
    fn integer_sums<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>, backend: Option<&str>) -> PyResult<Bound<'py, PyArray2<i32>>> {
        let backend = parse_backend(backend)?;
        let x = float32_array(x)?;
        let (m, _) = self.input_rows(&x)?;
        let xs = x.as_slice().map_err(|_| PyValueError::new_err("x must be C-contiguous"))?;
        let n = self.inner.rows();
        let sums = py
            .detach(|| {
                let act = self.inner.quantize_input(xs, m);
                self.inner.integer_sums(backend, &act)
            })
            .map_err(to_py)?;
        // Core lays sums out [n][m]; Python sees (m, n).
        let mut t = vec![0i32; m * n];
        for r in 0..n {
            for i in 0..m {
                t[i * n + r] = sums[r * m + i];
            }
        }
        PyArray1::from_vec(py, t).reshape([m, n])
    }

    fn __repr__(&self) -> String {
        let (n, k) = self.inner.shape();
        format!("PackedMatrix(shape=({n}, {k}), format='{}', bits_per_weight={:.4})", self.inner.format().name(), self.inner.bits_per_weight())
    }
}

impl PyPackedMatrix {
    fn input_rows(&self, x: &PyReadonlyArrayDyn<'_, f32>) -> PyResult<(usize, bool)> {
        let k = self.inner.cols();
        let shape = x.shape();
        match shape {
            [kk] if *kk == k => Ok((1, true)),
            [m, kk] if *kk == k && *m > 0 => Ok((*m, false)),
            _ => Err(PyValueError::new_err(format!("x must have shape ({k},) or (M, {k}) with M >= 1, got {shape:?}"))),
        }
    }
}

/// Borrows a float32 numpy array without copying, or says clearly what was wrong.
fn float32_array<'py>(x: &Bound<'py, PyAny>) -> PyResult<PyReadonlyArrayDyn<'py, f32>> {
    x.extract::<PyReadonlyArrayDyn<'py, f32>>().map_err(|_| {
        let got = match x.getattr("dtype") {
            Ok(d) => format!("an array of dtype {d}"),
            Err(_) => format!("a {}", x.get_type().name().map(|n| n.to_string()).unwrap_or_default()),
        };
        PyTypeError::new_err(format!("x must be a float32 numpy array, got {got}"))
    })
}

fn scale_from(n: usize, scale: &Bound<'_, PyAny>) -> PyResult<ScaleKind> {
    if let Ok(s) = scale.extract::<f32>() {
        return Ok(ScaleKind::PerTensor(s));
    }
    let arr: PyReadonlyArray1<f32> = scale.extract().map_err(|_| {
        PyValueError::new_err(format!("scale must be a float or a float32 array of {n} values (one per row)"))
    })?;
    Ok(ScaleKind::PerRow(arr.as_slice()?.to_vec()))
}

#[pyfunction]
fn pack_ternary(py: Python<'_>, w: PyReadonlyArrayDyn<'_, i8>, scale: &Bound<'_, PyAny>, bits: f64) -> PyResult<PyPackedMatrix> {
    let format = match bits {
        b if b == 2.0 => WeightFormat::Ternary2,
        b if b == 1.6 => WeightFormat::Ternary1_6,
        b => return Err(PyValueError::new_err(format!("bits must be 2.0 or 1.6, got {b}"))),
    };
    let (n, k) = matrix_shape(&w)?;
    let scale = scale_from(n, scale)?;
    let codes = w.as_slice().map_err(|_| PyValueError::new_err("w must be C-contiguous"))?;
    let inner = py.detach(|| PackedMatrix::pack(format, codes, n, k, scale)).map_err(to_py)?;
    Ok(PyPackedMatrix { inner })
}

#[pyfunction]
#[pyo3(signature = (w, row_scale, col_scale=None))]
fn pack_binary(
    py: Python<'_>,
    w: PyReadonlyArrayDyn<'_, i8>,
    row_scale: &Bound<'_, PyAny>,
    col_scale: Option<PyReadonlyArray1<'_, f32>>,
) -> PyResult<PyPackedMatrix> {
    let (n, k) = matrix_shape(&w)?;
    let scale = match (scale_from(n, row_scale)?, col_scale) {
        (s, None) => s,
        (ScaleKind::PerRow(row), Some(col)) => ScaleKind::OneBit { row, col: col.as_slice()?.to_vec() },
        (ScaleKind::PerTensor(s), Some(col)) => ScaleKind::OneBit { row: vec![s; n], col: col.as_slice()?.to_vec() },
        _ => unreachable!("scale_from returns per-tensor or per-row"),
    };
    let codes = w.as_slice().map_err(|_| PyValueError::new_err("w must be C-contiguous"))?;
    let inner = py.detach(|| PackedMatrix::pack(WeightFormat::Binary1, codes, n, k, scale)).map_err(to_py)?;
    Ok(PyPackedMatrix { inner })
}

fn matrix_shape(w: &PyReadonlyArrayDyn<'_, i8>) -> PyResult<(usize, usize)> {
    match w.shape() {
        [n, k] => Ok((*n, *k)),
        s => Err(PyValueError::new_err(format!("w must be a 2-D (N, K) array, got shape {s:?}"))),
    }
}

/// BitNet b1.58 per-token quantization: returns (q int8 (M, K), s float32 (M,)).
#[pyfunction]
fn quantize_activations<'py>(py: Python<'py>, x: PyReadonlyArrayDyn<'py, f32>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyArray1<f32>>)> {
    let shape = x.shape().to_vec();
    let (m, k) = match shape.as_slice() {
        [k] => (1, *k),
        [m, k] => (*m, *k),
        s => return Err(PyValueError::new_err(format!("x must be 1-D or 2-D, got shape {s:?}"))),
    };
    let xs = x.as_slice().map_err(|_| PyValueError::new_err("x must be C-contiguous"))?;
    let act = py.detach(|| binllm_core::formats::quantize_activations(xs, m, k, k));
    let q = PyArray1::from_vec(py, act.q);
    let q = if shape.len() == 1 { q.into_any() } else { q.reshape([m, k])?.into_any() };
    Ok((q, PyArray1::from_vec(py, act.scales)))
}

#[pyfunction]
fn backends() -> Vec<&'static str> {
    kernels::available_backends().iter().map(|b| b.name()).collect()
}

#[pyfunction]
fn backend() -> PyResult<&'static str> {
    kernels::active_backend().map(|b| b.name()).map_err(to_py)
}

#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    binllm_core::threads::set_num_threads(n).map_err(to_py)
}

#[pyfunction]
fn num_threads() -> usize {
    binllm_core::threads::num_threads()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("BinllmError", py.get_type::<BinllmError>())?;
    m.add("ModelFormatError", py.get_type::<ModelFormatError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("BackendError", py.get_type::<BackendError>())?;
    m.add_class::<PyPackedMatrix>()?;
    m.add_function(wrap_pyfunction!(pack_ternary, m)?)?;
    m.add_function(wrap_pyfunction!(pack_binary, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_activations, m)?)?;
    m.add_function(wrap_pyfunction!(backends, m)?)?;
    m.add_function(wrap_pyfunction!(backend, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    Ok(())
}
