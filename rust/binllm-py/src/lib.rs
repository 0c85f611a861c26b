//! binllm._core: the thin PyO3 layer. Each function extracts its arguments, releases the GIL,
//! calls binllm-core and converts the result back. No logic lives here; argument checks that
//! need numpy (dtype, contiguity) are done in python/binllm before calling in.

use binllm_core::kernels::{self, Backend};
use binllm_core::{Error, PackedMatrix, ScaleKind, WeightFormat};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// binllm's exceptions: one base, `BinllmError`, and every other class also a subclass of the
/// standard exception a Python user already catches (`except ValueError` / `except OSError` keep
/// working, `except binllm.BinllmError` catches everything binllm raises), as polars does. A PyO3
/// exception has one base, so the classes are made with `type(name, bases, dict)` once, in
/// the order of this table (a class's own base comes before it).
#[derive(Clone, Copy)]
enum PyError {
    Binllm,
    InvalidArgument,
    ModelFormat,
    Unsupported,
    Backend,
    File,
    ModelNotFound,
}

/// (variant, name, binllm base, standard base, doc); row i is variant i.
const ERROR_CLASSES: [(PyError, &str, Option<PyError>, &str, &str); 7] = [
    (PyError::Binllm, "BinllmError", None, "Exception", "Base class of every binllm error."),
    (PyError::InvalidArgument, "InvalidArgumentError", Some(PyError::Binllm), "ValueError", "An argument has a value binllm refuses."),
    (PyError::ModelFormat, "ModelFormatError", Some(PyError::Binllm), "ValueError", "A model or tensor file is malformed."),
    (PyError::Unsupported, "UnsupportedError", Some(PyError::Binllm), "ValueError", "Well-formed input that binllm does not support."),
    (PyError::Backend, "BackendError", Some(PyError::Binllm), "ValueError", "A compute backend is unknown or not usable on this CPU."),
    (PyError::File, "FileError", Some(PyError::Binllm), "OSError", "A file could not be read or written."),
    (PyError::ModelNotFound, "ModelNotFoundError", Some(PyError::File), "FileNotFoundError", "No model (or file) at the path given."),
];
const _: () = {
    let mut i = 0;
    while i < ERROR_CLASSES.len() {
        assert!(ERROR_CLASSES[i].0 as usize == i, "ERROR_CLASSES rows must follow PyError's order");
        i += 1;
    }
};

static ERROR_TYPES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn error_types(py: Python<'_>) -> PyResult<&Vec<Py<PyType>>> {
    ERROR_TYPES.get_or_try_init(py, || {
        let builtins = py.import("builtins")?;
        let mut made: Vec<Py<PyType>> = Vec::with_capacity(ERROR_CLASSES.len());
        for (_, name, own_base, standard_base, doc) in ERROR_CLASSES {
            let standard = builtins.getattr(standard_base)?;
            let bases = match own_base {
                Some(b) => PyTuple::new(py, [made[b as usize].bind(py).clone().into_any(), standard])?,
                None => PyTuple::new(py, [standard])?,
            };
            let dict = PyDict::new(py);
            dict.set_item("__module__", "binllm")?;
            dict.set_item("__doc__", doc)?;
            let class = builtins.getattr("type")?.call1((name, bases, dict))?.cast_into::<PyType>()?;
            made.push(class.unbind());
        }
        Ok(made)
    })
}

impl PyError {
    fn new_err(self, message: impl Into<String>) -> PyErr {
        let message = message.into();
        Python::attach(|py| match error_types(py) {
            Ok(types) => PyErr::from_type(types[self as usize].bind(py).clone(), message),
            Err(e) => e,
        })
    }
}

/// The one mapping from core errors to Python exceptions.
fn to_py(e: Error) -> PyErr {
    match e {
        Error::InvalidArgument(m) => PyError::InvalidArgument.new_err(m),
        Error::Format(_) => PyError::ModelFormat.new_err(e.to_string()),
        Error::Unsupported(_) => PyError::Unsupported.new_err(e.to_string()),
        Error::Backend(m) => PyError::Backend.new_err(m),
        Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => PyError::ModelNotFound.new_err(io.to_string()),
        Error::Io(io) => PyError::File.new_err(io.to_string()),
    }
}

fn parse_backend(name: Option<&str>) -> PyResult<Backend> {
    match name {
        None => kernels::active_backend().map_err(to_py),
        Some(n) => {
            let b = Backend::from_name(n).map_err(to_py)?;
            if !b.is_available() {
                return Err(PyError::Backend.new_err(format!("backend '{n}' is not usable on this CPU or build")));
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
    /// Packed bytes of one row (whole 64-byte blocks).
    #[getter]
    fn row_bytes(&self) -> usize {
        self.inner.row_bytes()
    }
    /// Weights per scale group, or None unless the matrix has per-group scales.
    #[getter]
    fn group_size(&self) -> Option<usize> {
        match self.inner.scale() {
            ScaleKind::PerGroup { group, .. } => Some(*group),
            _ => None,
        }
    }
    /// The per-row offsets (float32, N), or None.
    #[getter]
    fn row_offset<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f32>>> {
        self.inner.row_offset().map(|v| PyArray1::from_slice(py, v))
    }
    /// The packed codes as uint8 (N, row_bytes): what a binllm PTQ folder stores as `P.weight`.
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let (n, row_bytes) = (self.inner.rows(), self.inner.row_bytes());
        PyArray1::from_slice(py, self.inner.packed_data()).reshape([n, row_bytes])
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
        let xs = x.as_slice().map_err(|_| PyError::InvalidArgument.new_err("x must be C-contiguous"))?;
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

    /// Exact integer sums (M, N) of codes with the int8-quantized x, on a chosen backend;
    /// (M, N, groups) with per-group scales.
    #[pyo3(signature = (x, backend=None))]
    fn integer_sums<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>, backend: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
        let backend = parse_backend(backend)?;
        let x = float32_array(x)?;
        let (m, _) = self.input_rows(&x)?;
        let xs = x.as_slice().map_err(|_| PyError::InvalidArgument.new_err("x must be C-contiguous"))?;
        let n = self.inner.rows();
        let sums = py
            .detach(|| {
                let act = self.inner.quantize_input(xs, m);
                self.inner.integer_sums(backend, &act)
            })
            .map_err(to_py)?;
        // Core lays sums out [n][groups][m]; Python sees (m, n) or (m, n, groups).
        let groups = sums.len() / (n * m);
        let mut t = vec![0i32; m * n * groups];
        for r in 0..n {
            for g in 0..groups {
                for i in 0..m {
                    t[(i * n + r) * groups + g] = sums[(r * groups + g) * m + i];
                }
            }
        }
        let arr = PyArray1::from_vec(py, t);
        if matches!(self.inner.scale(), ScaleKind::PerGroup { .. }) {
            Ok(arr.reshape([m, n, groups])?.into_any())
        } else {
            Ok(arr.reshape([m, n])?.into_any())
        }
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
            _ => Err(PyError::InvalidArgument.new_err(format!("x must have shape ({k},) or (M, {k}) with M >= 1, got {shape:?}"))),
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

/// A float, a float32 array of n (per row), or with `group_size` a float32 array (n, groups).
fn scale_from(n: usize, scale: &Bound<'_, PyAny>, group_size: Option<usize>) -> PyResult<ScaleKind> {
    if let (Ok(s), None) = (scale.extract::<f32>(), group_size) {
        return Ok(ScaleKind::PerTensor(s));
    }
    let arr: PyReadonlyArrayDyn<f32> = scale.extract().map_err(|_| {
        PyError::InvalidArgument.new_err(format!("scale must be a float or a float32 array of {n} values (one per row), or (N, groups) with group_size"))
    })?;
    let values = arr.as_slice().map_err(|_| PyError::InvalidArgument.new_err("scale must be C-contiguous"))?.to_vec();
    match (arr.shape(), group_size) {
        ([_], None) => Ok(ScaleKind::PerRow(values)),
        ([_, _], Some(group)) => Ok(ScaleKind::PerGroup { group, scales: values }),
        (shape, Some(_)) => Err(PyError::InvalidArgument.new_err(format!("with group_size, scale must have shape (N, groups), got {shape:?}"))),
        (shape, None) => Err(PyError::InvalidArgument.new_err(format!("a scale of shape {shape:?} needs group_size (or pass shape ({n},))"))),
    }
}

/// Adds the optional row offsets.
fn with_offset(m: PackedMatrix, row_offset: Option<PyReadonlyArray1<'_, f32>>) -> PyResult<PackedMatrix> {
    match row_offset {
        Some(o) => m.with_row_offset(o.as_slice()?.to_vec()).map_err(to_py),
        None => Ok(m),
    }
}

#[pyfunction]
#[pyo3(signature = (w, scale, bits, group_size=None, row_offset=None))]
fn pack_ternary(
    py: Python<'_>,
    w: PyReadonlyArrayDyn<'_, i8>,
    scale: &Bound<'_, PyAny>,
    bits: f64,
    group_size: Option<usize>,
    row_offset: Option<PyReadonlyArray1<'_, f32>>,
) -> PyResult<PyPackedMatrix> {
    let format = match bits {
        2.0 => WeightFormat::Ternary2,
        1.6 => WeightFormat::Ternary1_6,
        b => return Err(PyError::InvalidArgument.new_err(format!("bits must be 2.0 or 1.6, got {b}"))),
    };
    let (n, k) = matrix_shape(&w)?;
    let scale = scale_from(n, scale, group_size)?;
    let codes = w.as_slice().map_err(|_| PyError::InvalidArgument.new_err("w must be C-contiguous"))?;
    let inner = py.detach(|| PackedMatrix::pack(format, codes, n, k, scale)).map_err(to_py)?;
    Ok(PyPackedMatrix { inner: with_offset(inner, row_offset)? })
}

/// binllm's 8-bit layout of a float32 (N, K) matrix: int8 codes (N, K) and one float32 scale
/// per block of `Q8_BLOCK` weights along each row (N, ceil(K / Q8_BLOCK)).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn q8_blocks<'py>(py: Python<'py>, w: PyReadonlyArray2<'py, f32>) -> PyResult<(Bound<'py, PyArray2<i8>>, Bound<'py, PyArray2<f32>>)> {
    let (n, k) = (w.shape()[0], w.shape()[1]);
    let values = w.as_slice().map_err(|_| to_py(Error::InvalidArgument("w must be C-contiguous".into())))?;
    let (codes, scales) = py.detach(|| binllm_core::model::linear::q8_blocks(values, n, k)).map_err(to_py)?;
    let blocks = k.div_ceil(binllm_core::model::linear::Q8_BLOCK);
    Ok((PyArray1::from_vec(py, codes).reshape([n, k])?, PyArray1::from_vec(py, scales).reshape([n, blocks])?))
}

/// The int8 codes (N, K) of packed rows as a binllm folder stores them (`P.weight`, uint8
/// (N, row_bytes)) in `format` ("t2", "t1.6", "b1"): what `PackedMatrix.unpack` gives.
#[pyfunction]
fn unpack_codes<'py>(py: Python<'py>, format: &str, data: PyReadonlyArray2<'py, u8>, k: usize) -> PyResult<Bound<'py, PyArray2<i8>>> {
    let format = WeightFormat::from_name(format).ok_or_else(|| PyError::InvalidArgument.new_err(format!("unknown weight format '{format}'")))?;
    let n = data.shape()[0];
    let bytes = data.as_slice().map_err(|_| PyError::InvalidArgument.new_err("data must be C-contiguous"))?.to_vec();
    let matrix = PackedMatrix::from_packed(format, n, k, bytes, ScaleKind::PerTensor(1.0)).map_err(to_py)?;
    let codes = py.detach(|| matrix.unpack());
    PyArray1::from_vec(py, codes).reshape([n, k])
}

#[pyfunction]
#[pyo3(signature = (w, row_scale, col_scale=None, row_offset=None, group_size=None))]
fn pack_binary(
    py: Python<'_>,
    w: PyReadonlyArrayDyn<'_, i8>,
    row_scale: &Bound<'_, PyAny>,
    col_scale: Option<PyReadonlyArray1<'_, f32>>,
    row_offset: Option<PyReadonlyArray1<'_, f32>>,
    group_size: Option<usize>,
) -> PyResult<PyPackedMatrix> {
    let (n, k) = matrix_shape(&w)?;
    let scale = match (scale_from(n, row_scale, group_size)?, col_scale) {
        (s, None) => s,
        (ScaleKind::PerRow(row), Some(col)) => ScaleKind::OneBit { row, col: col.as_slice()?.to_vec() },
        (ScaleKind::PerTensor(s), Some(col)) => ScaleKind::OneBit { row: vec![s; n], col: col.as_slice()?.to_vec() },
        (_, Some(_)) => return Err(PyError::InvalidArgument.new_err("col_scale and group_size cannot be combined")),
    };
    let codes = w.as_slice().map_err(|_| PyError::InvalidArgument.new_err("w must be C-contiguous"))?;
    let inner = py.detach(|| PackedMatrix::pack(WeightFormat::Binary1, codes, n, k, scale)).map_err(to_py)?;
    Ok(PyPackedMatrix { inner: with_offset(inner, row_offset)? })
}

fn matrix_shape(w: &PyReadonlyArrayDyn<'_, i8>) -> PyResult<(usize, usize)> {
    match w.shape() {
        [n, k] => Ok((*n, *k)),
        s => Err(PyError::InvalidArgument.new_err(format!("w must be a 2-D (N, K) array, got shape {s:?}"))),
    }
}

/// BitNet b1.58 per-token quantization: returns (q int8 (M, K), s float32 (M,)).
#[pyfunction]
fn quantize_activations<'py>(py: Python<'py>, x: PyReadonlyArrayDyn<'py, f32>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyArray1<f32>>)> {
    let shape = x.shape().to_vec();
    let (m, k) = match shape.as_slice() {
        [k] => (1, *k),
        [m, k] => (*m, *k),
        s => return Err(PyError::InvalidArgument.new_err(format!("x must be 1-D or 2-D, got shape {s:?}"))),
    };
    let xs = x.as_slice().map_err(|_| PyError::InvalidArgument.new_err("x must be C-contiguous"))?;
    let act = py.detach(|| binllm_core::kernels::quantize_activations(xs, m, k, k));
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

/// Sum of every byte of ``buf`` (uint8, 1-D), read by all worker threads, each as ``streams``
/// interleaved prefetched streams (1: one plain sequential stream): a streaming-read probe
/// whose GB/s, best over patterns, is the ceiling for kernels that stream as many bytes.
#[pyfunction]
#[pyo3(signature = (buf, streams=1))]
fn sum_bytes(py: Python<'_>, buf: PyReadonlyArray1<'_, u8>, streams: usize) -> PyResult<u64> {
    let bytes = buf.as_slice().map_err(|_| PyError::InvalidArgument.new_err("buf must be C-contiguous"))?;
    if streams == 0 || streams > 64 {
        return Err(PyError::InvalidArgument.new_err(format!("streams must be 1..=64, got {streams}")));
    }
    Ok(py.detach(|| if streams == 1 { kernels::bandwidth::sum_bytes_parallel(bytes) } else { kernels::bandwidth::sum_bytes_streams_parallel(bytes, streams) }))
}

// ---------------------------------------------------------------------------------------
// Models: loading, the forward pass with a KV cache, sampling.

use binllm_core::model::sampler::{Sampler, SamplingParams};
use binllm_core::model::{KvCache, Model};
use std::sync::Arc;

use binllm_core::model::load::LoadOptions;

/// Loads a Hugging Face folder or a .gguf file with its tokenizer and generation defaults,
/// each file parsed once (`binllm_core::model::load::load_with_defaults`): returns (model,
/// tokenizer.json text or None, defaults dict).
#[pyfunction]
#[pyo3(signature = (path, act_quant=true, output_type=None, ternary_format=None, kv_type=None))]
fn load_model<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    act_quant: bool,
    output_type: Option<&str>,
    ternary_format: Option<&str>,
    kv_type: Option<&str>,
) -> PyResult<(PyModel, Option<String>, Bound<'py, pyo3::types::PyDict>)> {
    let options = LoadOptions::from_names(act_quant, output_type, ternary_format, kv_type).map_err(to_py)?;
    let loaded = py.detach(|| binllm_core::model::load::load_with_defaults(&path, &options)).map_err(to_py)?;
    let model = loaded.model;
    let g = &loaded.defaults;
    let d = pyo3::types::PyDict::new(py);
    d.set_item("eos_token_ids", g.eos.clone())?;
    d.set_item("bos_token_id", g.bos)?;
    d.set_item("add_bos", g.add_bos)?;
    d.set_item("chat_template", g.chat_template.clone())?;
    d.set_item("bos_token", g.bos_token.clone())?;
    d.set_item("eos_token", g.eos_token.clone())?;
    d.set_item("do_sample", g.do_sample)?;
    d.set_item("temperature", g.temperature)?;
    d.set_item("top_k", g.top_k)?;
    d.set_item("top_p", g.top_p)?;
    d.set_item("min_p", g.min_p)?;
    d.set_item("repetition_penalty", g.repetition_penalty)?;
    Ok((PyModel { inner: Arc::new(model) }, loaded.tokenizer_json, d))
}

/// A loaded model (weights only; generation state lives in a `Session`).
#[pyclass(name = "Model", module = "binllm._core", frozen)]
struct PyModel {
    inner: Arc<Model>,
}

#[pymethods]
impl PyModel {
    /// Loads a Hugging Face folder or a .gguf file.
    #[staticmethod]
    #[pyo3(signature = (path, act_quant=true, output_type=None, ternary_format=None, kv_type=None))]
    fn load(
        py: Python<'_>,
        path: std::path::PathBuf,
        act_quant: bool,
        output_type: Option<&str>,
        ternary_format: Option<&str>,
        kv_type: Option<&str>,
    ) -> PyResult<Self> {
        let options = LoadOptions::from_names(act_quant, output_type, ternary_format, kv_type).map_err(to_py)?;
        let model = py.detach(|| binllm_core::model::load::load_path(&path, &options)).map_err(to_py)?;
        Ok(PyModel { inner: Arc::new(model) })
    }

    /// A model from a Hugging Face config.json's text and safetensors files' bytes (held in
    /// memory: calibration builds one block at a time this way).
    #[staticmethod]
    #[pyo3(signature = (config_json, files, act_quant=true, kv_type=None))]
    fn from_hf_bytes(py: Python<'_>, config_json: &str, files: Vec<Vec<u8>>, act_quant: bool, kv_type: Option<&str>) -> PyResult<Self> {
        let options = LoadOptions::from_names(act_quant, None, None, kv_type).map_err(to_py)?;
        let model = py
            .detach(|| {
                let parsed = files.iter().map(|f| binllm_core::loader::SafetensorsFile::parse(f)).collect::<Result<Vec<_>, Error>>()?;
                options.hf(config_json, &parsed, &[])
            })
            .map_err(to_py)?;
        Ok(PyModel { inner: Arc::new(model) })
    }

    /// A model from the bytes of a GGUF file.
    #[staticmethod]
    #[pyo3(signature = (data, act_quant=true, kv_type=None))]
    fn from_gguf_bytes(py: Python<'_>, data: &[u8], act_quant: bool, kv_type: Option<&str>) -> PyResult<Self> {
        let options = LoadOptions::from_names(act_quant, None, None, kv_type).map_err(to_py)?;
        let model = py.detach(|| binllm_core::loader::GgufFile::parse(data).and_then(|f| options.gguf(&f))).map_err(to_py)?;
        Ok(PyModel { inner: Arc::new(model) })
    }

    /// Hyper-parameters as a dict.
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let c = self.inner.config();
        let d = pyo3::types::PyDict::new(py);
        d.set_item("architecture", &c.architecture)?;
        d.set_item("hidden_size", c.hidden)?;
        d.set_item("intermediate_size", c.intermediate)?;
        d.set_item("num_hidden_layers", c.layers)?;
        d.set_item("num_attention_heads", c.heads)?;
        d.set_item("num_key_value_heads", c.kv_heads)?;
        d.set_item("head_dim", c.head_dim)?;
        d.set_item("vocab_size", c.vocab)?;
        d.set_item("max_position_embeddings", c.max_positions)?;
        d.set_item("rope_theta", c.rope_theta)?;
        d.set_item("rope_style", format!("{:?}", c.rope_style).to_lowercase())?;
        d.set_item("rms_norm_eps", c.rms_eps)?;
        d.set_item("hidden_act", c.activation.name())?;
        d.set_item("sub_norms", c.sub_norms.any())?;
        d.set_item("rope_scaling", c.rope_scaling.describe())?;
        d.set_item("tie_word_embeddings", c.tie_embeddings)?;
        d.set_item("bitnet", c.linear == binllm_core::model::LinearKind::BitNet)?;
        d.set_item("weight_scale", format!("{:?}", c.weight_scale).to_lowercase())?;
        d.set_item("act_quant", self.inner.act_quant())?;
        d.set_item("kv_type", self.inner.kv_type().name())?;
        d.set_item("bos_token_id", c.bos_token)?;
        d.set_item("eos_token_ids", c.eos_tokens.clone())?;
        Ok(d)
    }

    /// Every weight matrix as (kind, storage, parameters, bytes) (`Model::tensor_summary`).
    fn tensor_summary(&self) -> Vec<(&'static str, &'static str, usize, usize)> {
        self.inner.tensor_summary().into_iter().map(|t| (t.kind, t.storage, t.parameters, t.bytes)).collect()
    }

    /// Bytes of all weights held in memory.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    /// Last-token logits of several prompts run together in one batched forward pass (fresh
    /// caches), as `Engine.step` runs them: a list of float32 arrays (vocab,).
    fn forward_batch<'py>(&self, py: Python<'py>, prompts: Vec<Vec<u32>>) -> PyResult<Vec<Bound<'py, PyArray1<f32>>>> {
        let model = &self.inner;
        let logits = py
            .detach(|| {
                let mut caches: Vec<KvCache> = prompts.iter().map(|p| model.new_cache(p.len())).collect();
                let mut segments: Vec<binllm_core::model::Segment<'_>> =
                    prompts.iter().zip(caches.iter_mut()).map(|(p, cache)| binllm_core::model::Segment { tokens: p, cache, all_logits: false }).collect();
                model.forward_batch(&mut segments)
            })
            .map_err(to_py)?;
        Ok(logits.into_iter().map(|l| PyArray1::from_vec(py, l)).collect())
    }

    /// A generation session with room for `capacity` tokens (capped at the model's context).
    fn session(&self, capacity: usize) -> PyResult<PySession> {
        if capacity == 0 {
            return Err(PyError::InvalidArgument.new_err("capacity must be at least 1"));
        }
        Ok(PySession { model: self.inner.clone(), cache: self.inner.new_cache(capacity) })
    }
}

/// Runs `run` with an observer that hands each decoder linear's input (m rows) to the Python
/// callable `f` as `f(layer, site, array)`; the first exception it raises is returned. The
/// callback needs the GIL, so this path keeps it.
fn observed<T>(
    py: Python<'_>,
    m: usize,
    f: &Bound<'_, PyAny>,
    run: impl FnOnce(&mut dyn FnMut(usize, &'static str, &[f32])) -> Result<T, Error>,
) -> PyResult<T> {
    let mut failed: Option<PyErr> = None;
    let mut call = |layer: usize, site: &'static str, x: &[f32]| {
        if failed.is_some() {
            return;
        }
        let width = x.len() / m;
        if let Err(e) = PyArray1::from_slice(py, x).reshape([m, width]).and_then(|a| f.call1((layer, site, a)).map(|_| ())) {
            failed = Some(e);
        }
    };
    let out = run(&mut call);
    if let Some(e) = failed {
        return Err(e);
    }
    out.map_err(to_py)
}

/// A KV cache bound to a model: feed tokens, get logits.
#[pyclass(name = "Session", module = "binllm._core")]
struct PySession {
    model: Arc<Model>,
    cache: KvCache,
}

#[pymethods]
impl PySession {
    /// Runs `tokens` after those already seen; logits of the last token (vocab,) or of all
    /// (len, vocab).
    /// `observe(layer, site, x)`, when given, receives the input of every decoder linear layer
    /// as a float32 array (len, width); see `Model::forward_observed` in the core.
    #[pyo3(signature = (tokens, all_logits=false, observe=None))]
    fn forward<'py>(&mut self, py: Python<'py>, tokens: Vec<i64>, all_logits: bool, observe: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let vocab = self.model.config().vocab;
        let ids = tokens
            .iter()
            .map(|&t| u32::try_from(t).ok().filter(|&u| (u as usize) < vocab))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| PyError::InvalidArgument.new_err(format!("token ids must be in [0, {vocab})")))?;
        let m = ids.len();
        let (model, cache) = (&self.model, &mut self.cache);
        let logits = match observe {
            None => py.detach(|| model.forward(&ids, cache, all_logits)).map_err(to_py)?,
            Some(f) => observed(py, m, &f, |call| model.forward_observed(&ids, cache, all_logits, Some(call)))?,
        };
        let arr = PyArray1::from_vec(py, logits);
        if all_logits {
            Ok(arr.reshape([m, vocab])?.into_any())
        } else {
            Ok(arr.into_any())
        }
    }

    /// Runs the decoder layers on hidden states `x` (float32 (len, hidden), entering the first
    /// layer) after those already seen; returns the last layer's output (len, hidden), before the
    /// final norm. `observe` as in `forward`.
    #[pyo3(signature = (x, observe=None))]
    fn forward_hidden<'py>(&mut self, py: Python<'py>, x: &Bound<'py, PyAny>, observe: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let arr = float32_array(x)?;
        let d = self.model.config().hidden;
        if arr.ndim() != 2 || arr.shape()[1] != d || arr.shape()[0] == 0 {
            return Err(PyError::InvalidArgument.new_err(format!("hidden states must be float32 (len, {d}) with len >= 1")));
        }
        let m = arr.shape()[0];
        let xs = arr.as_slice().map_err(|_| PyError::InvalidArgument.new_err("hidden states must be C-contiguous"))?.to_vec();
        let (model, cache) = (&self.model, &mut self.cache);
        let out = match observe {
            None => py.detach(|| model.forward_hidden(&xs, cache, None)).map_err(to_py)?,
            Some(f) => observed(py, m, &f, |call| model.forward_hidden(&xs, cache, Some(call)))?,
        };
        Ok(PyArray1::from_vec(py, out).reshape([m, d])?.into_any())
    }

    /// Tokens cached so far.
    #[getter]
    fn length(&self) -> usize {
        self.cache.len()
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Bytes held by the KV cache.
    #[getter]
    fn cache_nbytes(&self) -> usize {
        self.cache.nbytes()
    }

    /// Keeps only the first `n` cached tokens.
    fn truncate(&mut self, n: usize) {
        self.cache.truncate(n)
    }
}

/// Seeded sampling: greedy when temperature is 0.
#[pyclass(name = "Sampler", module = "binllm._core")]
struct PySampler {
    inner: Sampler,
}

#[pymethods]
impl PySampler {
    #[new]
    #[pyo3(signature = (temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=0))]
    fn new(temperature: f32, top_k: usize, top_p: f32, min_p: f32, repetition_penalty: f32, seed: u64) -> PyResult<Self> {
        let params = SamplingParams { temperature, top_k, top_p, min_p, repetition_penalty, seed };
        Ok(PySampler { inner: Sampler::new(params).map_err(to_py)? })
    }

    /// Picks the next token from float32 logits, given the tokens so far.
    fn sample(&mut self, logits: &Bound<'_, PyAny>, history: Vec<u32>) -> PyResult<u32> {
        let arr = float32_array(logits)?;
        let mut v = arr.as_slice().map_err(|_| PyError::InvalidArgument.new_err("logits must be C-contiguous"))?.to_vec();
        Ok(self.inner.sample(&mut v, &history))
    }
}

fn gguf_value_to_py<'py>(py: Python<'py>, v: &binllm_core::loader::GgufValue) -> PyResult<Bound<'py, PyAny>> {
    use binllm_core::loader::GgufValue as G;
    Ok(match v {
        G::U8(x) => x.into_pyobject(py)?.into_any(),
        G::I8(x) => x.into_pyobject(py)?.into_any(),
        G::U16(x) => x.into_pyobject(py)?.into_any(),
        G::I16(x) => x.into_pyobject(py)?.into_any(),
        G::U32(x) => x.into_pyobject(py)?.into_any(),
        G::I32(x) => x.into_pyobject(py)?.into_any(),
        G::U64(x) => x.into_pyobject(py)?.into_any(),
        G::I64(x) => x.into_pyobject(py)?.into_any(),
        G::F32(x) => x.into_pyobject(py)?.into_any(),
        G::F64(x) => x.into_pyobject(py)?.into_any(),
        G::Bool(x) => pyo3::types::PyBool::new(py, *x).to_owned().into_any(),
        G::String(x) => x.into_pyobject(py)?.into_any(),
        G::Array(items) => {
            let list = pyo3::types::PyList::empty(py);
            for it in items {
                list.append(gguf_value_to_py(py, it)?)?;
            }
            list.into_any()
        }
    })
}

/// Metadata of a GGUF file as a dict, and its tensors as (name, type, shape).
#[pyfunction]
fn gguf_read_metadata<'py>(py: Python<'py>, path: std::path::PathBuf) -> PyResult<(Bound<'py, pyo3::types::PyDict>, Vec<(String, String, Vec<usize>)>)> {
    let bytes = binllm_core::model::load::map_file(&path).map_err(to_py)?;
    let file = binllm_core::loader::GgufFile::parse(&bytes).map_err(to_py)?;
    let d = pyo3::types::PyDict::new(py);
    for (k, v) in &file.metadata {
        d.set_item(k, gguf_value_to_py(py, v)?)?;
    }
    let tensors = file.tensors.iter().map(|t| (t.name.clone(), t.dtype.name().to_string(), t.shape.clone())).collect();
    Ok((d, tensors))
}

/// Tensors of a GGUF or safetensors file dequantized to float32 numpy arrays (numpy order),
/// as {name: array}; `names` picks some (all when None). Ternary types give code * scale.
#[pyfunction]
#[pyo3(signature = (path, names=None))]
fn read_tensors<'py>(py: Python<'py>, path: std::path::PathBuf, names: Option<Vec<String>>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    use binllm_core::loader::{GgufFile, SafetensorsFile, TensorView};
    let bytes = binllm_core::model::load::map_file(&path).map_err(to_py)?;
    let views: Vec<TensorView<'_>> =
        if bytes.starts_with(b"GGUF") { GgufFile::parse(&bytes).map_err(to_py)?.tensors } else { SafetensorsFile::parse(&bytes).map_err(to_py)?.tensors };
    let d = pyo3::types::PyDict::new(py);
    let wanted = |n: &str| names.as_ref().is_none_or(|v| v.iter().any(|w| w == n));
    if let Some(v) = &names {
        if let Some(missing) = v.iter().find(|n| !views.iter().any(|t| &t.name == *n)) {
            return Err(PyError::ModelFormat.new_err(format!("{}: no tensor named '{missing}'", path.display())));
        }
    }
    for t in views.iter().filter(|t| wanted(&t.name)) {
        // Tensor views may read lazily through a `TensorSource` (not Sync), so no GIL release here.
        let data = t.to_f32().map_err(to_py)?;
        d.set_item(&t.name, PyArray1::from_vec(py, data).reshape(t.shape.clone())?)?;
    }
    Ok(d)
}

/// A float Llama model (Hugging Face folder or GGUF file) in Hugging Face form, the input of
/// PTQ: (config.json text, {Hugging Face name: float32 array}, {file name: text}).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn read_float_source<'py>(py: Python<'py>, path: std::path::PathBuf) -> PyResult<(String, Bound<'py, pyo3::types::PyDict>, Vec<(String, String)>)> {
    let source = py.detach(|| binllm_core::model::source::read_float_source(&path)).map_err(to_py)?;
    let config = source.config_json();
    let tensors = pyo3::types::PyDict::new(py);
    for (name, shape, values) in source.tensors {
        tensors.set_item(name, PyArray1::from_vec(py, values).reshape(shape)?)?;
    }
    Ok((config, tensors, source.files))
}

// ---------------------------------------------------------------------------------------
// Export: a loaded model as a GGUF file.

/// One typed metadata value: `tag` names the GGUF type ("str", "bool", "u32", "i32", "f32",
/// ... or "[str]", "[i32]", ... for arrays), because llama.cpp checks each key's type.
fn gguf_value_from_py(key: &str, tag: &str, v: &Bound<'_, PyAny>) -> PyResult<binllm_core::loader::GgufValue> {
    use binllm_core::loader::GgufValue as G;
    if let Some(inner) = tag.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let items: Vec<Bound<'_, PyAny>> = v.try_iter()?.collect::<PyResult<_>>()?;
        return items.iter().map(|x| gguf_value_from_py(key, inner, x)).collect::<PyResult<Vec<_>>>().map(G::Array);
    }
    let bad = |e: PyErr| PyError::InvalidArgument.new_err(format!("metadata '{key}' ({tag}): {e}"));
    Ok(match tag {
        "str" => G::String(v.extract().map_err(bad)?),
        "bool" => G::Bool(v.extract().map_err(bad)?),
        "u8" => G::U8(v.extract().map_err(bad)?),
        "i8" => G::I8(v.extract().map_err(bad)?),
        "u16" => G::U16(v.extract().map_err(bad)?),
        "i16" => G::I16(v.extract().map_err(bad)?),
        "u32" => G::U32(v.extract().map_err(bad)?),
        "i32" => G::I32(v.extract().map_err(bad)?),
        "u64" => G::U64(v.extract().map_err(bad)?),
        "i64" => G::I64(v.extract().map_err(bad)?),
        "f32" => G::F32(v.extract().map_err(bad)?),
        "f64" => G::F64(v.extract().map_err(bad)?),
        other => return Err(PyError::InvalidArgument.new_err(format!("metadata '{key}': unknown GGUF type tag '{other}'"))),
    })
}

/// Writes `model` as a GGUF file at `path`: linears as `type` (tq2_0, tq1_0, f16), embeddings
/// as `embedding_type` (f16, q8_0). `metadata` is a list of (key, type tag, value) written after
/// the model's own keys; `source_gguf` names a GGUF file whose `tokenizer.*` keys and
/// `general.name` (which replaces `name`) are copied first, with their exact types. Returns a
/// report dict.
#[pyfunction]
#[pyo3(signature = (model, path, r#type="tq2_0", embedding_type="f16", name="", metadata=Vec::new(), source_gguf=None))]
#[allow(clippy::too_many_arguments)]
fn export_gguf<'py>(
    py: Python<'py>,
    model: &Bound<'py, PyModel>,
    path: std::path::PathBuf,
    r#type: &str,
    embedding_type: &str,
    name: &str,
    metadata: Vec<(String, String, Bound<'py, PyAny>)>,
    source_gguf: Option<std::path::PathBuf>,
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    use binllm_core::model::export::{self, EmbeddingType, ExportOptions, ExportType};
    let mut meta = Vec::new();
    if let Some(src) = &source_gguf {
        let bytes = binllm_core::model::load::map_file(src).map_err(to_py)?;
        let file = binllm_core::loader::GgufFile::parse(&bytes).map_err(to_py)?;
        meta.extend(export::carried_metadata(&file));
    }
    for (key, tag, value) in &metadata {
        meta.push((key.clone(), gguf_value_from_py(key, tag, value)?));
    }
    let opts = ExportOptions {
        linear_type: ExportType::from_name(r#type).map_err(to_py)?,
        embedding_type: EmbeddingType::from_name(embedding_type).map_err(to_py)?,
        name: name.to_string(),
        metadata: meta,
    };
    let inner = model.get().inner.clone();
    let report = py.detach(|| export::write_gguf(&inner, &opts, &path)).map_err(to_py)?;
    let d = pyo3::types::PyDict::new(py);
    d.set_item("architecture", &report.architecture)?;
    d.set_item("rope_style", report.rope_style)?;
    d.set_item("permuted_qk", report.permuted_qk)?;
    let tensors: Vec<(String, &str, Vec<usize>)> = report.tensors.iter().map(|(n, t, s)| (n.clone(), t.name(), s.clone())).collect();
    d.set_item("tensors", tensors)?;
    d.set_item("fallbacks", report.fallbacks)?;
    d.set_item("warnings", report.warnings)?;
    d.set_item("max_scale_rounding", report.max_scale_rounding)?;
    Ok(d)
}

// ---------------------------------------------------------------------------------------
// Tokenizers: the core's byte-level BPE and its one GGUF-metadata -> tokenizer.json mapping.

/// An untyped Python value (from a `gguf_read_metadata` dict) as a metadata value.
fn gguf_value_guess_from_py(key: &str, v: &Bound<'_, PyAny>) -> PyResult<binllm_core::loader::GgufValue> {
    use binllm_core::loader::GgufValue as G;
    if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
        return Ok(G::Bool(b.is_true()));
    }
    if let Ok(i) = v.extract::<i64>() {
        return Ok(G::I64(i));
    }
    if let Ok(u) = v.extract::<u64>() {
        return Ok(G::U64(u));
    }
    if let Ok(f) = v.cast::<pyo3::types::PyFloat>() {
        return Ok(G::F64(f.value()));
    }
    if let Ok(text) = v.extract::<String>() {
        return Ok(G::String(text));
    }
    if v.is_instance_of::<pyo3::types::PyList>() || v.is_instance_of::<pyo3::types::PyTuple>() {
        let items: Vec<Bound<'_, PyAny>> = v.try_iter()?.collect::<PyResult<_>>()?;
        return items.iter().map(|x| gguf_value_guess_from_py(key, x)).collect::<PyResult<Vec<_>>>().map(G::Array);
    }
    Err(PyTypeError::new_err(format!("metadata '{key}': cannot hold a {}", v.get_type().name()?)))
}

/// The Hugging Face tokenizer.json text a GGUF file describes: its embedded
/// `tokenizer.huggingface.json`, or one built from `tokenizer.ggml.*`. `source` is a GGUF path
/// or a metadata dict (as `gguf_read_metadata` returns). An unknown `tokenizer.ggml.pre` is an
/// UnsupportedError.
#[pyfunction]
fn gguf_tokenizer_json(source: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(d) = source.cast::<pyo3::types::PyDict>() {
        let mut meta = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key: String = k.extract()?;
            if key.starts_with("tokenizer.") {
                meta.push((key.clone(), gguf_value_guess_from_py(&key, &v)?));
            }
        }
        return binllm_core::tokenizer::hf_json_from_metadata(&meta).map_err(to_py);
    }
    let path: std::path::PathBuf = source.extract()?;
    let bytes = binllm_core::model::load::map_file(&path).map_err(to_py)?;
    let file = binllm_core::loader::GgufFile::parse(&bytes).map_err(to_py)?;
    binllm_core::tokenizer::hf_json_from_gguf(&file).map_err(to_py)
}

/// llama.cpp's `tokenizer.ggml.pre` name for a tokenizer.json `pre_tokenizer` (JSON text), or
/// None when no name binllm knows splits text the same way.
#[pyfunction]
fn pre_tokenizer_name(pre_tokenizer_json: &str) -> Option<&'static str> {
    binllm_core::tokenizer::pre_tokenizer_name(pre_tokenizer_json)
}

/// The core's tokenizer (what the browser build runs), for tests against `tokenizers`.
#[pyclass(name = "Tokenizer", module = "binllm._core", frozen)]
struct PyTokenizer {
    inner: binllm_core::tokenizer::Tokenizer,
}

#[pymethods]
impl PyTokenizer {
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        Ok(PyTokenizer { inner: binllm_core::tokenizer::Tokenizer::from_json(text).map_err(to_py)? })
    }

    #[staticmethod]
    fn from_gguf(path: std::path::PathBuf) -> PyResult<Self> {
        let bytes = binllm_core::model::load::map_file(&path).map_err(to_py)?;
        let file = binllm_core::loader::GgufFile::parse(&bytes).map_err(to_py)?;
        Ok(PyTokenizer { inner: binllm_core::tokenizer::Tokenizer::from_gguf(&file).map_err(to_py)? })
    }

    #[pyo3(signature = (text, add_special=false))]
    fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        self.inner.encode(text, add_special)
    }

    #[pyo3(signature = (ids, skip_special=false))]
    fn decode(&self, ids: Vec<u32>, skip_special: bool) -> String {
        self.inner.decode(&ids, skip_special)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
}

/// Each token's bytes in decoded text (the core's `engine::Detokenizer`), from tokenizer.json.
#[pyclass(name = "Detokenizer", module = "binllm._core", frozen)]
struct PyDetokenizer {
    inner: Arc<binllm_core::engine::Detokenizer>,
}

#[pymethods]
impl PyDetokenizer {
    #[new]
    fn new(tokenizer_json: &str) -> PyResult<Self> {
        Ok(PyDetokenizer { inner: Arc::new(binllm_core::engine::Detokenizer::from_json(tokenizer_json).map_err(to_py)?) })
    }

    /// Raises what `Detokenizer(tokenizer_json)` would raise, without building its table: a
    /// load calls it, and the table waits for the first generation. The message starts with
    /// `place` (where the text came from).
    #[staticmethod]
    #[pyo3(signature = (tokenizer_json, place="tokenizer.json"))]
    fn check(py: Python<'_>, tokenizer_json: &str, place: &str) -> PyResult<()> {
        py.detach(|| binllm_core::engine::Detokenizer::check(tokenizer_json, place)).map_err(to_py)
    }

    /// Text of `ids`, special tokens left out, as the engine streams it.
    fn decode(&self, ids: Vec<u32>) -> String {
        self.inner.decode(&ids)
    }
}

/// The core's generation engine (`binllm_core::engine::Engine`): sequences of one model that
/// step together. `binllm.Model.generate` and `binllm.Engine` drive it from one thread.
#[pyclass(name = "Engine", module = "binllm._core", frozen)]
struct PyEngine {
    inner: std::sync::Mutex<binllm_core::engine::Engine>,
}

fn generation_params(
    max_new_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    seed: u64,
    stop: Vec<String>,
) -> binllm_core::engine::GenerationParams {
    binllm_core::engine::GenerationParams { sampling: SamplingParams { temperature, top_k, top_p, min_p, repetition_penalty, seed }, max_new_tokens, stop }
}

impl PyEngine {
    fn lock(&self) -> std::sync::MutexGuard<'_, binllm_core::engine::Engine> {
        // A panic inside a step is caught by PyO3; the engine's state is still whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PyEngine {
    #[new]
    fn new(model: &PyModel, detokenizer: &PyDetokenizer, eos: Vec<u32>) -> Self {
        let engine = binllm_core::engine::Engine::new(model.inner.clone(), detokenizer.inner.clone(), eos);
        PyEngine { inner: std::sync::Mutex::new(engine) }
    }

    /// Checks a request as `add` does (`binllm_core::engine::validate`): ValueError naming
    /// the value. Bindings call it when a request arrives, before it waits in a queue.
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (model, prompt, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=0, stop=Vec::new()))]
    fn validate(
        model: &PyModel,
        prompt: Vec<u32>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        seed: u64,
        stop: Vec<String>,
    ) -> PyResult<()> {
        let params = generation_params(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop);
        binllm_core::engine::validate(&model.inner, &prompt, &params).map_err(to_py)
    }

    /// Adds a sequence; it runs from the next step. Returns its id.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prompt, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=0, stop=Vec::new()))]
    fn add(
        &self,
        prompt: Vec<u32>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        seed: u64,
        stop: Vec<String>,
    ) -> PyResult<u64> {
        let params = generation_params(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop);
        self.lock().add(&prompt, params).map_err(to_py)
    }

    /// Removes a sequence as reaching `max_new_tokens` there would (`Engine::stop`): returns
    /// the text its stream held back (half a character as U+FFFD, text that might have begun a
    /// stop string), "" when nothing was held back, None when no sequence has that id.
    fn cancel(&self, id: u64) -> Option<String> {
        self.lock().stop(id)
    }

    /// Runs every sequence one token further (without the GIL). Returns a list of
    /// (id, text, tokens generated, finish reason or None, detail or None).
    #[allow(clippy::type_complexity)]
    fn step(&self, py: Python<'_>) -> PyResult<Vec<(u64, String, usize, Option<&'static str>, Option<&'static str>)>> {
        let events = py.detach(|| self.lock().step()).map_err(to_py)?;
        Ok(events.into_iter().map(|e| (e.id, e.text, e.tokens, e.finished.map(|f| f.name()), e.finished.map(|f| f.detail()))).collect())
    }

    fn __len__(&self) -> usize {
        self.lock().len()
    }
}

/// `BINLLM_THREADS` as a thread count (None when unset); ValueError naming a bad value.
#[pyfunction]
fn threads_from_env() -> PyResult<Option<usize>> {
    binllm_core::threads::threads_from_env().map_err(to_py)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    for ((_, name, ..), class) in ERROR_CLASSES.iter().zip(error_types(py)?) {
        m.add(*name, class.bind(py))?;
    }
    m.add_class::<PyPackedMatrix>()?;
    m.add_function(wrap_pyfunction!(pack_ternary, m)?)?;
    m.add_function(wrap_pyfunction!(pack_binary, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_codes, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_activations, m)?)?;
    m.add_function(wrap_pyfunction!(backends, m)?)?;
    m.add_function(wrap_pyfunction!(backend, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(threads_from_env, m)?)?;
    m.add_function(wrap_pyfunction!(sum_bytes, m)?)?;
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(load_model, m)?)?;
    m.add_class::<PySession>()?;
    m.add_class::<PySampler>()?;
    m.add_function(wrap_pyfunction!(gguf_read_metadata, m)?)?;
    m.add_function(wrap_pyfunction!(read_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(read_float_source, m)?)?;
    m.add_function(wrap_pyfunction!(q8_blocks, m)?)?;
    m.add("Q8_BLOCK", binllm_core::model::linear::Q8_BLOCK)?;
    // Weights per 64-byte block of each packed format, from the one table.
    let blocks = pyo3::types::PyDict::new(m.py());
    for spec in &binllm_core::formats::FORMATS {
        blocks.set_item(spec.name, spec.block_weights)?;
    }
    m.add("FORMAT_BLOCK_WEIGHTS", blocks)?;
    m.add_function(wrap_pyfunction!(export_gguf, m)?)?;
    m.add_function(wrap_pyfunction!(gguf_tokenizer_json, m)?)?;
    m.add_function(wrap_pyfunction!(pre_tokenizer_name, m)?)?;
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyDetokenizer>()?;
    m.add_class::<PyEngine>()?;
    Ok(())
}
