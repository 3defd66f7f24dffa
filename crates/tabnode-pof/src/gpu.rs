//! The WGSL prover: `C = A·B` on any wgpu device (WebGPU in the browser
//! worker, Vulkan/Metal/DX12 natively).

use futures::channel::oneshot;
use wgpu::util::DeviceExt;

/// The prover's kernel: 4×8 register blocking, vec4 loads, no barriers
/// (the fastest of [`Kernel::ALL`] on SwiftShader and lavapipe).
pub const MATMUL_WGSL: &str = include_str!("matmul_4x8.wgsl");

/// The WGSL kernels this crate has: the prover's and two plain references
/// it is benchmarked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// 4×4 blocks (one vec4 column per invocation).
    Blocked4x4,
    /// 4×8 blocks (two vec4 columns per invocation): the prover's kernel,
    /// [`MATMUL_WGSL`].
    Blocked4x8,
    /// One invocation per element, scalar loads.
    Naive,
    /// 16×16 shared-memory tiles with barriers.
    Tiled16,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 4] = [
        Kernel::Blocked4x4,
        Kernel::Blocked4x8,
        Kernel::Naive,
        Kernel::Tiled16,
    ];

    /// Its WGSL source.
    pub fn source(self) -> &'static str {
        match self {
            Kernel::Blocked4x4 => include_str!("matmul_4x4.wgsl"),
            Kernel::Blocked4x8 => MATMUL_WGSL,
            Kernel::Naive => include_str!("matmul_naive.wgsl"),
            Kernel::Tiled16 => include_str!("matmul_tiled.wgsl"),
        }
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Blocked4x4 => "blocked-4x4",
            Kernel::Blocked4x8 => "blocked-4x8",
            Kernel::Naive => "naive",
            Kernel::Tiled16 => "tiled-16",
        }
    }

    /// Workgroups to dispatch for a padded size `np`.
    fn dispatch(self, np: u32) -> (u32, u32) {
        match self {
            Kernel::Blocked4x4 => ((np / 4).div_ceil(8), (np / 4).div_ceil(8)),
            Kernel::Blocked4x8 => ((np / 8).div_ceil(8), (np / 4).div_ceil(8)),
            Kernel::Naive => (np.div_ceil(8), np.div_ceil(8)),
            Kernel::Tiled16 => (np.div_ceil(16), np.div_ceil(16)),
        }
    }
}

/// Why the GPU prover failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// The adapter refused a device.
    #[error("device request failed: {0}")]
    Device(String),
    /// A matrix does not fit in one storage binding of this device.
    #[error("a {n}×{n} matrix needs {bytes} bytes; this device binds at most {limit}")]
    TooLarge {
        /// The size asked for.
        n: u32,
        /// Bytes per padded matrix.
        bytes: u64,
        /// The device's `max_storage_buffer_binding_size`.
        limit: u64,
    },
    /// Input lengths do not match `n`.
    #[error("inputs have {got} elements, expected {expected}")]
    WrongLength {
        /// Their length.
        got: usize,
        /// `n²`.
        expected: usize,
    },
    /// Reading the result back failed.
    #[error("reading the result back failed: {0}")]
    Readback(String),
}

/// The highest-performance adapter of `backends`.
///
/// # Errors
/// [`GpuError::Device`] when there is none.
pub async fn best_adapter(backends: wgpu::Backends) -> Result<wgpu::Adapter, GpuError> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| GpuError::Device(e.to_string()))
}

/// A compiled matmul pipeline on one device.
#[derive(Debug)]
pub struct GpuProver {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipeline: wgpu::ComputePipeline,
    kernel: Kernel,
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl GpuProver {
    /// Opens a device on `adapter` with the adapter's own limits (big
    /// matrices need big bindings) and compiles the kernel.
    ///
    /// # Errors
    /// [`GpuError::Device`].
    pub async fn new(adapter: &wgpu::Adapter) -> Result<Self, GpuError> {
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("tabnode-pof"),
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::Device(e.to_string()))?;
        Ok(Self::with_device(device, queue))
    }

    /// Compiles the prover's kernel on an existing device.
    pub fn with_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self::with_kernel(device, queue, Kernel::Blocked4x8)
    }

    /// Compiles `kernel` on an existing device (benchmarks compare them).
    pub fn with_kernel(device: wgpu::Device, queue: wgpu::Queue, kernel: Kernel) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.name()),
            source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("tabnode-pof matmul"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        Self {
            device,
            queue,
            pipeline,
            kernel,
        }
    }

    /// The device the prover runs on (others may share it).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The device's queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The same device with another kernel.
    pub fn other_kernel(&self, kernel: Kernel) -> Self {
        Self::with_kernel(self.device.clone(), self.queue.clone(), kernel)
    }

    /// The largest `n` this device can multiply in one binding.
    pub fn max_n(&self) -> u32 {
        let limit = self.device.limits().max_storage_buffer_binding_size;
        let padded = ((limit / 4) as f64).sqrt() as u64;
        (padded - padded % 8).min(u64::from(crate::MAX_N)) as u32
    }

    /// Computes `A·B` for row-major `n × n` inputs.
    ///
    /// # Errors
    /// Wrong lengths, a matrix too large for the device, a failed readback.
    pub async fn matmul(&self, a: &[f32], b: &[f32], n: u32) -> Result<Vec<f32>, GpuError> {
        let nu = n as usize;
        // Padded to a multiple of 8 (the 4×8 kernel's block width).
        let np = nu.div_ceil(8) * 8;
        let bytes = (np * np * 4) as u64;
        let limit = self.device.limits().max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(GpuError::TooLarge { n, bytes, limit });
        }
        if a.len() != nu * nu || b.len() != nu * nu {
            return Err(GpuError::WrongLength {
                got: a.len().min(b.len()),
                expected: nu * nu,
            });
        }
        let pad = |m: &[f32]| -> Vec<u8> {
            if np == nu {
                return to_bytes(m);
            }
            let mut out = vec![0f32; np * np];
            for (i, row) in m.chunks(nu).enumerate() {
                out[i * np..i * np + nu].copy_from_slice(row);
            }
            to_bytes(&out)
        };
        let storage = |label, data: &[u8]| {
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: data,
                    usage: wgpu::BufferUsages::STORAGE,
                })
        };
        let a_buf = storage("A", &pad(a));
        let b_buf = storage("B", &pad(b));
        let c_buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("C"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("C readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let w = (np / 4) as u32;
        let dims: Vec<u8> = [w, np as u32]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let dims = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("dims"),
                contents: &dims,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("tabnode-pof matmul"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: a_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: b_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: c_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: dims.as_entire_binding(),
                },
            ],
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &bind, &[]);
            let (x, y) = self.kernel.dispatch(np as u32);
            pass.dispatch_workgroups(x, y, 1);
        }
        enc.copy_buffer_to_buffer(&c_buf, 0, &read, 0, bytes);
        self.queue.submit([enc.finish()]);

        let (tx, rx) = oneshot::channel();
        read.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        rx.await
            .map_err(|_| GpuError::Readback("the map callback was dropped".into()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let view = read
            .get_mapped_range(..)
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let mut c = Vec::with_capacity(nu * nu);
        for row in view.chunks(np * 4).take(nu) {
            c.extend(
                row[..nu * 4]
                    .chunks_exact(4)
                    .map(|q| f32::from_le_bytes([q[0], q[1], q[2], q[3]])),
            );
        }
        drop(view);
        read.unmap();
        Ok(c)
    }
}
