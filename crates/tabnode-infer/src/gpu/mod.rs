//! The engine's GPU side (issue #12): the file's quantized blocks on a wgpu
//! device (WebGPU in the tab, Vulkan/Metal/DX12 natively) and WGSL kernels
//! that read them where they lie.
//!
//! Raw WGSL on `wgpu` rather than burn's kernels: a decode step needs its
//! buffers, bind groups and pipelines made once at load and a token
//! recorded into one submission, which burn's tensor graph does not let a
//! caller control; the Proof-of-FLOPS prover (`tabnode-pof::gpu`) already
//! runs WGSL through the same `wgpu` in the tab and natively. burn stays the
//! f32 reference model.
//!
//! A weight is uploaded as the file's bytes (padded to whole words): no
//! copy is expanded, so GPU memory is the file's size. Every block of every
//! format starts on an even byte, so a kernel reads any four bytes with at
//! most two aligned loads (`word` in `blocks.wgsl`) and decodes the f16
//! scales with `unpack2x16float`: no `shader-f16` needed. A weight larger
//! than the device's `max_storage_buffer_binding_size` is split by rows
//! into several buffers (the output layers of Qwen2.5 exceed WebGPU's
//! default 128 MiB).
//!
//! Two matvec kernels per format: [`Variant::Rows`] (an invocation per
//! row, no barriers: software adapters, where a barrier switches between
//! the invocations a CPU thread runs) and [`Variant::Lanes`] (16
//! invocations per row, partial sums added in workgroup memory: hardware
//! GPUs).

use std::collections::HashMap;
use std::sync::Mutex;

use futures::channel::oneshot;
use wgpu::util::DeviceExt;

use crate::quant::{GgmlType, QTensor};

mod bert;
mod model;
mod rows8;
pub use bert::{GpuBert, GpuBertError, BATCH_TOKENS};
pub use model::{GpuModel, GpuModelError, GpuSession};

/// Why the GPU could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter of the requested backends.
    #[error("no GPU adapter: {0}")]
    Adapter(#[from] wgpu::RequestAdapterError),
    /// The adapter refused a device.
    #[error("the adapter refused a device: {0}")]
    Device(#[from] wgpu::RequestDeviceError),
    /// No kernel reads this format.
    #[error("no GPU kernel reads {0:?} weights")]
    Format(GgmlType),
    /// A row (or the rows a variant interleaves) too large for one
    /// storage binding of this device.
    #[error("rows of {bytes} bytes do not fit a storage binding of {limit} bytes")]
    RowTooLarge {
        /// Bytes of a row, or of the rows interleaved together.
        bytes: u64,
        /// The device's `max_storage_buffer_binding_size`.
        limit: u64,
    },
    /// A shape that does not fit the kernels (values per row not a
    /// multiple of the block, or more than 2³² bytes).
    #[error("a {rows}×{cols} {ty:?} matrix does not fit the GPU kernels")]
    Shape {
        /// Format.
        ty: GgmlType,
        /// Rows.
        rows: usize,
        /// Values per row.
        cols: usize,
    },
    /// An input or output of the wrong length.
    #[error("{what}: {actual} values where {expected} were expected")]
    Length {
        /// Which one.
        what: &'static str,
        /// Its length.
        actual: usize,
        /// The length it needs.
        expected: usize,
    },
    /// Waiting for the device failed.
    #[error("waiting for the GPU failed: {0}")]
    Poll(#[from] wgpu::PollError),
    /// Mapping a buffer for reading failed.
    #[error("reading back from the GPU failed: {0}")]
    Map(#[from] wgpu::BufferAsyncError),
    /// The mapped range could not be viewed.
    #[error("reading back from the GPU failed: {0}")]
    MapRange(#[from] wgpu::MapRangeError),
    /// The device rejected the engine's shaders or commands (a browser's
    /// WGSL compiler is stricter than some native ones).
    #[error("the device rejected the engine: {0}")]
    Rejected(wgpu::Error),
    /// The model's KV cache serves another session.
    #[error("the GPU model is busy with another sequence")]
    Busy,
    /// A token's embedding row could not be read.
    #[error("embedding row: {0}")]
    Embedding(crate::quant::QuantError),
    /// The map callback never ran.
    #[error("reading back from the GPU failed: the callback was dropped")]
    MapDropped,
}

/// Positions the engine's KV cache holds unless told otherwise (allocated
/// at load: a prompt and its answer up to this many tokens).
pub const POSITIONS: usize = 2048;

/// Which matvec kernel (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// An invocation per row, no barriers.
    Rows,
    /// 16 invocations per row, four rows per workgroup, a workgroup-memory
    /// reduction.
    Lanes,
}

impl Variant {
    /// Both.
    pub const ALL: [Variant; 2] = [Variant::Rows, Variant::Lanes];

    /// The kernels for an adapter: [`Variant::Rows`] on a software one
    /// (a CPU), [`Variant::Lanes`] on a GPU.
    pub fn for_adapter(software: bool) -> Self {
        if software {
            Variant::Rows
        } else {
            Variant::Lanes
        }
    }

    /// Rows whose words are interleaved (see `blocks.wgsl`).
    fn interleave(self) -> usize {
        match self {
            Variant::Rows => rows8::ROWS,
            Variant::Lanes => 1,
        }
    }

    /// `rows` or `lanes` (also the kernels' entry points).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Rows => "rows",
            Variant::Lanes => "lanes",
        }
    }

    /// Rows one workgroup computes.
    fn rows_per_workgroup(self) -> u32 {
        match self {
            Variant::Rows => 64,
            Variant::Lanes => 4,
        }
    }
}

/// How the kernels see a format: the WGSL function, and the bytes and
/// values of the unit it reads (a block; four values for F32/F16).
fn layout(ty: GgmlType) -> Result<(&'static str, u32, u32), GpuError> {
    Ok(match ty {
        GgmlType::Q4_0 => ("dot_q4_0", 18, 32),
        GgmlType::Q4_1 => ("dot_q4_1", 20, 32),
        GgmlType::Q5_0 => ("dot_q5_0", 22, 32),
        GgmlType::Q8_0 => ("dot_q8_0", 34, 32),
        GgmlType::Q4_K => ("dot_q4_k", 144, 256),
        GgmlType::Q5_K => ("dot_q5_k", 176, 256),
        GgmlType::Q6_K => ("dot_q6_k", 210, 256),
        GgmlType::F32 => ("dot_f32", 16, 4),
        GgmlType::F16 => ("dot_f16", 8, 4),
        other => return Err(GpuError::Format(other)),
    })
}

/// The formats the GPU kernels read.
pub const FORMATS: [GgmlType; 9] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::F32,
    GgmlType::F16,
];

/// The WGSL of `variant`'s matvec kernel for `ty`: [`rows8`]'s where it
/// has one for a [`Variant::Rows`] format, else `matvec.wgsl`'s.
fn matvec_source(ty: GgmlType, variant: Variant) -> Result<String, GpuError> {
    let (dot, bytes, values) = layout(ty)?;
    if variant == Variant::Rows {
        if let Some(entry) = rows8::source(ty) {
            let head = include_str!("matvec.wgsl")
                .split("// -- entry points --")
                .next()
                .unwrap_or_default();
            return Ok(format!("{head}{entry}"));
        }
    }
    Ok(format!(
        "{}\n{}",
        include_str!("matvec.wgsl"),
        include_str!("blocks.wgsl")
    )
    .replace("DOT", dot)
    .replace("BYTES", &format!("{bytes}u"))
    .replace("VEC4S", &format!("{}u", values / 4))
    .replace("STRIDE", &format!("{}u", variant.interleave())))
}

/// The `Dims` uniform of `matvec.wgsl`.
fn dims(rows: u32, blocks: u32, row_words: u32, x_at: u32, y_at: u32, acc: bool) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, v) in
        out.chunks_exact_mut(4)
            .zip([rows, blocks, row_words, x_at, y_at, u32::from(acc), 0, 0])
    {
        o.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// A compute pipeline of WGSL `src`'s `main`, its layout from the shader.
fn compute_pipeline(dev: &wgpu::Device, src: &str) -> wgpu::ComputePipeline {
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    })
}

/// A bind group of `pipeline`'s group 0 with `buffers` at bindings 0, 1, …
fn bind_buffers(
    dev: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<_> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

/// The highest-performance adapter of `backends`.
///
/// # Errors
/// [`GpuError::Adapter`] when there is none.
pub async fn adapter(backends: wgpu::Backends) -> Result<wgpu::Adapter, GpuError> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    Ok(instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await?)
}

/// A device with the engine's pipelines (compiled on first use).
#[derive(Debug)]
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    layout: wgpu::BindGroupLayout,
    pipelines: Mutex<HashMap<(GgmlType, Variant), wgpu::ComputePipeline>>,
    /// Largest buffer a weight's part may take: the device's
    /// `max_storage_buffer_binding_size` unless lowered.
    binding_limit: u64,
}

/// A weight on the GPU: the file's blocks, each row padded to whole words,
/// laid out for one [`Variant`]'s kernels, in one buffer per part of rows.
#[derive(Debug)]
pub struct GpuMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    variant: Variant,
    row_words: usize,
    /// Each part's first row, row count and buffer.
    parts: Vec<(usize, usize, wgpu::Buffer)>,
}

impl GpuMatrix {
    /// Its format.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The kernels it is laid out for.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Buffers it was split into.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// Bytes on the device.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|(_, _, b)| b.size()).sum()
    }
}

/// One recorded `y = W·x`: a dispatch per part of `W`, its bind groups and
/// uniforms made once.
#[derive(Debug)]
pub struct Matvec {
    pipeline: wgpu::ComputePipeline,
    /// Per part: bind group and workgroups (x, y).
    dispatches: Vec<(wgpu::BindGroup, (u32, u32))>,
}

impl Matvec {
    /// Records its dispatches into `pass`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        for (bind, (x, y)) in &self.dispatches {
            pass.set_bind_group(0, bind, &[]);
            pass.dispatch_workgroups(*x, *y, 1);
        }
    }

    /// Dispatches it records.
    pub fn dispatch_count(&self) -> usize {
        self.dispatches.len()
    }
}

/// Workgroups (x, y) for `groups` in all: x at most WebGPU's 65535.
fn grid(groups: u32) -> (u32, u32) {
    let x = groups.clamp(1, 65_535);
    (x, groups.div_ceil(x).max(1))
}

impl Gpu {
    /// Opens a device on `adapter` with the adapter's own limits (a large
    /// weight needs large bindings).
    ///
    /// # Errors
    /// [`GpuError::Device`].
    pub async fn new(adapter: &wgpu::Adapter) -> Result<Self, GpuError> {
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("tabnode-infer"),
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await?;
        Ok(Self::with_device(device, queue))
    }

    /// The engine on an existing device.
    pub fn with_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("matvec"),
            entries: &[
                storage(0, true),
                storage(1, true),
                storage(2, false),
                wgpu::BindGroupLayoutEntry {
                    binding: 3,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
            ],
        });
        Self {
            binding_limit: device.limits().max_storage_buffer_binding_size,
            device,
            queue,
            layout,
            pipelines: Mutex::new(HashMap::new()),
        }
    }

    /// Splits the weights uploaded from now on into parts of at most
    /// `bytes` (at most the device's own limit): what a device with
    /// WebGPU's default 128 MiB bindings would do, on any device.
    pub fn limit_bindings(&mut self, bytes: u64) {
        self.binding_limit = bytes.min(self.device.limits().max_storage_buffer_binding_size);
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    fn pipeline(&self, ty: GgmlType, variant: Variant) -> Result<wgpu::ComputePipeline, GpuError> {
        let mut cache = self
            .pipelines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = cache.get(&(ty, variant)) {
            return Ok(p.clone());
        }
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("matvec"),
                source: wgpu::ShaderSource::Wgsl(matvec_source(ty, variant)?.into()),
            });
        let layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("matvec"),
                bind_group_layouts: &[Some(&self.layout)],
                immediate_size: 0,
            });
        let p = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("matvec"),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(variant.name()),
                compilation_options: Default::default(),
                cache: None,
            });
        cache.insert((ty, variant), p.clone());
        Ok(p)
    }

    /// Uploads a weight as its blocks for `variant`'s kernels: each row
    /// padded to whole words (at most three bytes a row; Q6_K's blocks each
    /// to 212 bytes for the software adapters' kernel), the words of
    /// eight rows interleaved for [`Variant::Rows`] (a last group short of
    /// eight rows padded with zero rows), split by rows where it exceeds
    /// one storage binding.
    ///
    /// # Errors
    /// [`GpuError::Format`], [`GpuError::Shape`], [`GpuError::RowTooLarge`].
    pub fn upload(&self, w: &QTensor<'_>, variant: Variant) -> Result<GpuMatrix, GpuError> {
        let ty = w.ty();
        let (_, bytes, values) = layout(ty)?;
        let shape = GpuError::Shape {
            ty,
            rows: w.rows(),
            cols: w.cols(),
        };
        if !w.cols().is_multiple_of(values as usize) {
            return Err(shape);
        }
        let row_bytes = w.cols() / values as usize * bytes as usize;
        // Blocks as the kernels read them: padded to whole words where the
        // variant's kernel for the format wants them so.
        let padded = if variant == Variant::Rows {
            rows8::padded_block(ty).unwrap_or(bytes as usize)
        } else {
            bytes as usize
        };
        let row_words = (w.cols() / values as usize * padded).div_ceil(4);
        let group = variant.interleave();
        let group_bytes = (row_words * 4 * group) as u64;
        let limit = self.binding_limit;
        let per_part = (limit / group_bytes.max(1)) as usize * group;
        if per_part == 0 {
            return Err(GpuError::RowTooLarge {
                bytes: group_bytes,
                limit,
            });
        }
        if u32::try_from(per_part.min(w.rows().next_multiple_of(group)) * row_words).is_err() {
            return Err(shape);
        }
        let mut parts = Vec::new();
        let mut first = 0;
        while first < w.rows() {
            let count = per_part.min(w.rows() - first);
            let mut words = vec![0u32; count.next_multiple_of(group) * row_words];
            for r in 0..count {
                let row = &w.data()[(first + r) * row_bytes..(first + r + 1) * row_bytes];
                let row: Vec<u8> = if padded == bytes as usize {
                    row.to_vec()
                } else {
                    row.chunks(bytes as usize)
                        .flat_map(|b| {
                            b.iter()
                                .copied()
                                .chain(std::iter::repeat_n(0, padded - b.len()))
                        })
                        .collect()
                };
                for (j, c) in row.chunks(4).enumerate() {
                    let mut b = [0u8; 4];
                    b[..c.len()].copy_from_slice(c);
                    words[((r / group) * row_words + j) * group + r % group] =
                        u32::from_le_bytes(b);
                }
            }
            let data: Vec<u8> = words.iter().flat_map(|v| v.to_le_bytes()).collect();
            let buffer = self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("weight"),
                    contents: &data,
                    usage: wgpu::BufferUsages::STORAGE,
                });
            parts.push((first, count, buffer));
            first += count;
        }
        Ok(GpuMatrix {
            ty,
            rows: w.rows(),
            cols: w.cols(),
            variant,
            row_words,
            parts,
        })
    }

    /// Prepares `y[y_at..y_at + rows] = W·x[x_at..x_at + cols]` (`x_at` a
    /// multiple of 4; `x` holds f32 values, `y` f32 values); `+=` with
    /// [`Gpu::matvec_acc`].
    ///
    /// # Errors
    /// [`GpuError::Format`] (no pipeline), [`GpuError::Length`] when `x`
    /// or `y` is too short or `x_at` not a multiple of 4.
    pub fn matvec(
        &self,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        x_at: usize,
        y: &wgpu::Buffer,
        y_at: usize,
    ) -> Result<Matvec, GpuError> {
        self.matvec_into(w, (x, x_at), (y, y_at), false)
    }

    /// [`Gpu::matvec`] adding to `y` (a residual connection).
    ///
    /// # Errors
    /// As [`Gpu::matvec`].
    pub fn matvec_acc(
        &self,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<Matvec, GpuError> {
        self.matvec_into(w, (x, 0), (y, 0), true)
    }

    fn matvec_into(
        &self,
        w: &GpuMatrix,
        (x, x_at): (&wgpu::Buffer, usize),
        (y, y_at): (&wgpu::Buffer, usize),
        acc: bool,
    ) -> Result<Matvec, GpuError> {
        let variant = w.variant;
        let (_, _, values) = layout(w.ty)?;
        let need = |what, have: u64, expected: usize| {
            if have < expected as u64 * 4 {
                Err(GpuError::Length {
                    what,
                    actual: (have / 4) as usize,
                    expected,
                })
            } else {
                Ok(())
            }
        };
        if !x_at.is_multiple_of(4) {
            return Err(GpuError::Length {
                what: "activation offset",
                actual: x_at,
                expected: x_at.next_multiple_of(4),
            });
        }
        need("activation", x.size(), x_at + w.cols)?;
        need("output", y.size(), y_at + w.rows)?;
        let pipeline = self.pipeline(w.ty, variant)?;
        let blocks = (w.cols / values as usize) as u32;
        let per_group = variant.rows_per_workgroup();
        let dispatches = w
            .parts
            .iter()
            .map(|(first, count, buffer)| {
                let uniform = self
                    .device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("matvec dims"),
                        contents: &dims(
                            *count as u32,
                            blocks,
                            w.row_words as u32,
                            (x_at / 4) as u32,
                            (y_at + first) as u32,
                            acc,
                        ),
                        usage: wgpu::BufferUsages::UNIFORM,
                    });
                let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("matvec"),
                    layout: &self.layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: buffer.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: x.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 2,
                            resource: y.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 3,
                            resource: uniform.as_entire_binding(),
                        },
                    ],
                });
                (bind, grid((*count as u32).div_ceil(per_group)))
            })
            .collect();
        Ok(Matvec {
            pipeline,
            dispatches,
        })
    }

    /// A storage buffer of `len` f32 values (zeros), readable back.
    pub fn vector(&self, len: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("vector"),
            size: (len.next_multiple_of(4).max(4) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Writes `values` at the start of `buffer`.
    pub fn write(&self, buffer: &wgpu::Buffer, values: &[f32]) {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.queue.write_buffer(buffer, 0, &bytes);
    }

    /// Runs `ops` in one submission and reads `len` f32 values of `out`
    /// back.
    ///
    /// # Errors
    /// [`GpuError::Poll`], [`GpuError::Map`], [`GpuError::MapDropped`].
    pub async fn run_and_read(
        &self,
        ops: &[&Matvec],
        out: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<f32>, GpuError> {
        self.submit_and_read(|pass| ops.iter().for_each(|op| op.record(pass)), out, len)
            .await
    }

    /// One compute pass of what `record` records, submitted.
    fn submit(&self, record: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            record(&mut pass);
        }
        self.queue.submit([enc.finish()]);
    }

    /// One compute pass of what `record` records, one submission, then
    /// `len` f32 values of `out` read back.
    async fn submit_and_read(
        &self,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>),
        out: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let read = self.submit_copying(record, out, len);
        self.read_back(read, len).await
    }

    /// One compute pass of what `record` records and a copy of `len` f32
    /// values of `out` into a new mappable buffer, submitted; the buffer
    /// (for [`Gpu::read_back`]).
    fn submit_copying(
        &self,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>),
        out: &wgpu::Buffer,
        len: usize,
    ) -> wgpu::Buffer {
        let bytes = (len * 4) as u64;
        let read = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            record(&mut pass);
        }
        if bytes > 0 {
            enc.copy_buffer_to_buffer(out, 0, &read, 0, bytes);
        }
        self.queue.submit([enc.finish()]);
        read
    }

    /// The first `len` f32 values of `read` (from [`Gpu::submit_copying`])
    /// once the GPU has written them.
    async fn read_back(&self, read: wgpu::Buffer, len: usize) -> Result<Vec<f32>, GpuError> {
        let (tx, rx) = oneshot::channel();
        read.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::wait_indefinitely())?;
        rx.await.map_err(|_| GpuError::MapDropped)??;
        let view = read.get_mapped_range(..)?;
        let values = view
            .chunks_exact(4)
            .take(len)
            .map(|q| f32::from_le_bytes([q[0], q[1], q[2], q[3]]))
            .collect();
        drop(view);
        read.unmap();
        Ok(values)
    }
}
