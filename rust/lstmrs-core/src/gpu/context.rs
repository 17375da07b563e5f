//! The one place that talks to wgpu: the lazily created device, the shader and pipeline caches,
//! storage buffers, and [`Recorder`], which turns a whole forward or backward pass into one
//! command encoder and one submit. A wgpu upgrade should only need to touch this file.

use crate::error::{Error, GpuFailure, Result};
use bytemuck::Pod;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use super::GpuInfo;

pub(crate) fn gpu_error(failure: GpuFailure, detail: impl Into<String>) -> Error {
    Error::Gpu {
        failure,
        detail: detail.into(),
    }
}

/// Workgroups to cover `n` items at `per` a workgroup (saturating: `dispatch` rejects too many).
pub(crate) fn count(n: usize, per: usize) -> u32 {
    u32::try_from(n.div_ceil(per)).unwrap_or(u32::MAX)
}

/// Words (u32) of one dispatch's parameters: each shader's `Params` fits (the forward step's,
/// 20, is the largest). A launcher passes as many as its shader reads; the rest are zero.
const PARAMS_WORDS: usize = 20;
type Params = [u32; PARAMS_WORDS];
const PARAMS_BYTES: u64 = 4 * PARAMS_WORDS as u64;

/// The smallest limits the kernels are written for (WebGPU's defaults meet all of them).
const NEEDED: [(&str, u32); 6] = [
    ("max_storage_buffers_per_shader_stage", 6),
    ("max_compute_invocations_per_workgroup", 256),
    ("max_compute_workgroup_size_x", 64),
    ("max_compute_workgroup_size_y", 16),
    ("max_compute_workgroup_storage_size", 16384),
    ("max_dynamic_uniform_buffers_per_pipeline_layout", 1),
];

fn limit(l: &wgpu::Limits, name: &str) -> u32 {
    match name {
        "max_storage_buffers_per_shader_stage" => l.max_storage_buffers_per_shader_stage,
        "max_compute_invocations_per_workgroup" => l.max_compute_invocations_per_workgroup,
        "max_compute_workgroup_size_x" => l.max_compute_workgroup_size_x,
        "max_compute_workgroup_size_y" => l.max_compute_workgroup_size_y,
        "max_compute_workgroup_storage_size" => l.max_compute_workgroup_storage_size,
        _ => l.max_dynamic_uniform_buffers_per_pipeline_layout,
    }
}

/// The WGSL programs; the step kernels are a common part with a cell part appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Shader {
    Matmul,
    LstmForward,
    GruForward,
    LstmBackward,
    GruBackward,
    /// The projected LSTM's `h' = W_hr m` (forward) and the gradient reaching `h` (backward).
    ProjForward,
    ProjBackward,
    Ops,
}

impl Shader {
    fn source(self) -> String {
        const MATH: &str = include_str!("shaders/math.wgsl");
        const STEP: &str = include_str!("shaders/step_common.wgsl");
        const FWD: &str = include_str!("shaders/step_forward.wgsl");
        const BWD: &str = include_str!("shaders/step_backward.wgsl");
        match self {
            Shader::Matmul => include_str!("shaders/matmul.wgsl").into(),
            Shader::Ops => include_str!("shaders/ops.wgsl").into(),
            Shader::LstmForward => {
                [STEP, FWD, include_str!("shaders/lstm_forward.wgsl"), MATH].concat()
            }
            Shader::GruForward => {
                [STEP, FWD, include_str!("shaders/gru_forward.wgsl"), MATH].concat()
            }
            Shader::LstmBackward => {
                [STEP, BWD, include_str!("shaders/lstm_backward.wgsl")].concat()
            }
            Shader::GruBackward => [STEP, BWD, include_str!("shaders/gru_backward.wgsl")].concat(),
            Shader::ProjForward => [STEP, FWD, include_str!("shaders/proj_forward.wgsl")].concat(),
            Shader::ProjBackward => {
                [STEP, BWD, include_str!("shaders/proj_backward.wgsl")].concat()
            }
        }
    }
}

/// How a shader declares binding `i` of group 0 (binding 0 is always the dynamic uniform).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Access {
    Read,
    ReadWrite,
}

/// One compute entry point with its storage bindings (1, 2, ...) and override constants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub shader: Shader,
    pub entry: &'static str,
    pub storage: &'static [Access],
    /// Override constants (booleans as 0/1).
    pub constants: Vec<(&'static str, u32)>,
}

struct Pipeline {
    id: u64,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// The device and everything cached on it. Created once per process, on first use.
pub(crate) struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: GpuInfo,
    limits: wgpu::Limits,
    modules: Mutex<HashMap<Shader, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<Kernel, Arc<Pipeline>>>,
    next_id: AtomicU64,
}

static GPU: OnceLock<Result<Gpu>> = OnceLock::new();

/// The process's GPU context, created on the first call; a failure is remembered and returned
/// again (the adapter set does not change while a process runs).
pub(crate) fn gpu() -> Result<&'static Gpu> {
    GPU.get_or_init(init).as_ref().map_err(Clone::clone)
}

fn init() -> Result<Gpu> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN;
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .map_err(|e| {
        gpu_error(
            GpuFailure::NoAdapter,
            format!(
                "no Vulkan adapter ({e}); install the GPU's Vulkan driver, or Mesa's lavapipe \
                 (Debian: mesa-vulkan-drivers) for a software one"
            ),
        )
    })?;
    let a = adapter.get_info();
    let info = GpuInfo {
        name: a.name,
        backend: a.backend.to_str().to_owned(),
        device_type: match a.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        }
        .to_owned(),
        driver: a.driver,
        driver_info: a.driver_info,
    };
    let limits = adapter.limits();
    for (name, need) in NEEDED {
        let have = limit(&limits, name);
        if have < need {
            return Err(gpu_error(
                GpuFailure::LimitsTooSmall,
                format!("{}: {name} is {have}, the kernels need {need}", info.name),
            ));
        }
    }
    // Ask for everything the adapter offers: buffer sizes are the limit that matters here.
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("lstmrs"),
        required_limits: limits.clone(),
        memory_hints: wgpu::MemoryHints::Performance,
        ..Default::default()
    }))
    .map_err(|e| gpu_error(GpuFailure::Device, format!("{}: {e}", info.name)))?;
    // Errors are caught by the error scope around each call; anything that escapes one must not
    // take the process down (wgpu's default handler panics).
    device.on_uncaptured_error(Arc::new(|_e: wgpu::Error| {}));
    Ok(Gpu {
        device,
        queue,
        info,
        limits,
        modules: Mutex::new(HashMap::new()),
        pipelines: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    })
}

/// A storage buffer of `len` f32 (or u32) elements. Cloning shares the same GPU buffer.
#[derive(Debug, Clone)]
pub(crate) struct GBuf {
    id: u64,
    buf: wgpu::Buffer,
    len: usize,
}

impl GBuf {
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Gpu {
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    pub fn max_workgroups(&self) -> u32 {
        self.limits.max_compute_workgroups_per_dimension
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A zeroed buffer of `len` elements (wgpu zero-initialises new buffers). Sizes are rounded
    /// up to 16 bytes so any buffer can also be bound as `array<vec4<f32>>`.
    pub fn zeros(&self, len: usize, label: &str) -> Result<GBuf> {
        let bytes = ((len.max(1) * 4).div_ceil(16) * 16) as u64;
        // Shaders index with u32 elements, hence the last bound.
        let max = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            .min(4 * u64::from(u32::MAX));
        if bytes > max {
            return Err(gpu_error(
                GpuFailure::LimitsTooSmall,
                format!(
                    "{label} needs a {bytes}-byte buffer; {} allows {max} bytes per storage \
                     buffer (use smaller batches or sequences)",
                    self.info.name
                ),
            ));
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GBuf {
            id: self.next_id(),
            buf,
            len,
        })
    }

    /// A buffer holding `data` (f32 or u32). The write is queued and lands before the next submit.
    pub fn upload<T: Pod>(&self, data: &[T], label: &str) -> Result<GBuf> {
        debug_assert_eq!(std::mem::size_of::<T>(), 4);
        let b = self.zeros(data.len(), label)?;
        if !data.is_empty() {
            self.queue
                .write_buffer(&b.buf, 0, bytemuck::cast_slice(data));
        }
        Ok(b)
    }

    fn module(&self, shader: Shader) -> Result<wgpu::ShaderModule> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(&shader) {
            return Ok(m.clone());
        }
        // Its own error scope, so that a WGSL error comes back with the compiler's message.
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&format!("{shader:?}")),
                source: wgpu::ShaderSource::Wgsl(shader.source().into()),
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(gpu_error(
                GpuFailure::Device,
                format!("compiling {shader:?}: {e}"),
            ));
        }
        modules.insert(shader, module.clone());
        Ok(module)
    }

    /// The compiled pipeline of `kernel`, built on first use and cached.
    fn pipeline(&self, kernel: &Kernel) -> Result<Arc<Pipeline>> {
        if let Some(p) = self
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kernel)
        {
            return Ok(p.clone());
        }
        let module = self.module(kernel.shader)?;
        // Its own error scope: a pipeline that failed to build must not be cached.
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: wgpu::BufferSize::new(PARAMS_BYTES),
            },
            count: None,
        }];
        for (i, access) in kernel.storage.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *access == Access::Read,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(kernel.entry),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(kernel.entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let constants: Vec<(&str, f64)> = kernel
            .constants
            .iter()
            .map(|&(k, v)| (k, f64::from(v)))
            .collect();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // Every kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(gpu_error(
                GpuFailure::Device,
                format!("building {:?}/{}: {e}", kernel.shader, kernel.entry),
            ));
        }
        let p = Arc::new(Pipeline {
            id: self.next_id(),
            pipeline,
            layout,
        });
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kernel.clone(), p.clone());
        Ok(p)
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns what they caught into
    /// an error. Every public entry of the backend goes through here.
    pub fn scoped<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match (o, v) {
            (Some(e), _) => Err(gpu_error(
                GpuFailure::Device,
                format!("{}: out of memory: {e}", self.info.name),
            )),
            (None, Some(e)) => Err(gpu_error(
                GpuFailure::Device,
                format!("{}: {e}", self.info.name),
            )),
            (None, None) => r,
        }
    }
}

enum Op {
    Dispatch {
        pipeline: Arc<Pipeline>,
        buffers: Vec<GBuf>,
        params: usize,
        groups: [u32; 3],
    },
    Copy {
        src: GBuf,
        src_off: usize,
        dst: GBuf,
        dst_off: usize,
        len: usize,
    },
}

/// Records a sequence of dispatches and copies, then encodes them into one command encoder and
/// submits once. Each dispatch's parameters go into one uniform buffer read at a dynamic offset,
/// so recording never waits on the device.
pub(crate) struct Recorder<'g> {
    gpu: &'g Gpu,
    ops: Vec<Op>,
    params: Vec<Params>,
}

impl<'g> Recorder<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        Recorder {
            gpu,
            ops: Vec::new(),
            params: Vec::new(),
        }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Queues `kernel` over `groups` workgroups with storage `buffers` (bindings 1, 2, ...) and
    /// `params` (at most `PARAMS_WORDS`, zero-padded) as its uniform.
    pub fn dispatch(
        &mut self,
        kernel: &Kernel,
        buffers: &[&GBuf],
        params: &[u32],
        groups: [u32; 3],
    ) -> Result<()> {
        debug_assert_eq!(buffers.len(), kernel.storage.len(), "{}", kernel.entry);
        assert!(
            params.len() <= PARAMS_WORDS,
            "{}: too many parameters",
            kernel.entry
        );
        let max = self.gpu.max_workgroups();
        if groups.iter().any(|&g| g > max) {
            return Err(gpu_error(
                GpuFailure::LimitsTooSmall,
                format!(
                    "{} needs {groups:?} workgroups; {} allows {max} per dimension (use smaller \
                     batches or sequences)",
                    kernel.entry, self.gpu.info.name
                ),
            ));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let pipeline = self.gpu.pipeline(kernel)?;
        let mut words: Params = [0; PARAMS_WORDS];
        words[..params.len()].copy_from_slice(params);
        self.params.push(words);
        self.ops.push(Op::Dispatch {
            pipeline,
            buffers: buffers.iter().map(|&b| b.clone()).collect(),
            params: self.params.len() - 1,
            groups,
        });
        Ok(())
    }

    /// Queues a copy of `len` elements.
    pub fn copy(&mut self, src: &GBuf, src_off: usize, dst: &GBuf, dst_off: usize, len: usize) {
        debug_assert!(src_off + len <= src.len && dst_off + len <= dst.len);
        if len > 0 {
            self.ops.push(Op::Copy {
                src: src.clone(),
                src_off,
                dst: dst.clone(),
                dst_off,
                len,
            });
        }
    }

    /// Encodes everything, submits once, waits, and reads back the regions `(buffer, offset,
    /// len)` into `Vec<T>`s (`T` is f32; the caller checked).
    pub fn submit<T: Pod>(self, reads: &[(&GBuf, usize, usize)]) -> Result<Vec<Vec<T>>> {
        let g = self.gpu;
        // Dynamic offsets must be multiples of the adapter's alignment.
        let align = u64::from(g.limits.min_uniform_buffer_offset_alignment).max(1);
        let stride = PARAMS_BYTES.next_multiple_of(align);
        let uniform = g.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: (self.params.len().max(1) as u64) * stride,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if !self.params.is_empty() {
            let mut bytes = vec![0u8; self.params.len() * stride as usize];
            for (chunk, p) in bytes.chunks_exact_mut(stride as usize).zip(&self.params) {
                chunk[..PARAMS_BYTES as usize].copy_from_slice(bytemuck::bytes_of(p));
            }
            g.queue.write_buffer(&uniform, 0, &bytes);
        }

        // One bind group per (pipeline, buffers): a step kernel reuses its group at every step.
        let mut groups: HashMap<(u64, Vec<u64>), wgpu::BindGroup> = HashMap::new();
        for op in &self.ops {
            if let Op::Dispatch {
                pipeline, buffers, ..
            } = op
            {
                let key = (
                    pipeline.id,
                    buffers.iter().map(|b| b.id).collect::<Vec<_>>(),
                );
                groups.entry(key).or_insert_with(|| {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &uniform,
                            offset: 0,
                            size: wgpu::BufferSize::new(PARAMS_BYTES),
                        }),
                    }];
                    for (i, b) in buffers.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry {
                            binding: i as u32 + 1,
                            resource: b.buf.as_entire_binding(),
                        });
                    }
                    g.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &pipeline.layout,
                        entries: &entries,
                    })
                });
            }
        }

        let total: usize = reads.iter().map(|r| r.2).sum();
        let staging = g.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: (total.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let mut enc = g
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("lstmrs"),
            });
        let mut i = 0;
        while i < self.ops.len() {
            match &self.ops[i] {
                Op::Copy {
                    src,
                    src_off,
                    dst,
                    dst_off,
                    len,
                } => {
                    enc.copy_buffer_to_buffer(
                        &src.buf,
                        (*src_off * 4) as u64,
                        &dst.buf,
                        (*dst_off * 4) as u64,
                        Some((*len * 4) as u64),
                    );
                    i += 1;
                }
                Op::Dispatch { .. } => {
                    // Consecutive dispatches share one pass; wgpu orders them and makes each
                    // one's writes visible to the next.
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: None,
                    });
                    while let Some(Op::Dispatch {
                        pipeline,
                        buffers,
                        params,
                        groups: n,
                    }) = self.ops.get(i)
                    {
                        let key = (
                            pipeline.id,
                            buffers.iter().map(|b| b.id).collect::<Vec<_>>(),
                        );
                        pass.set_pipeline(&pipeline.pipeline);
                        pass.set_bind_group(0, &groups[&key], &[(*params as u64 * stride) as u32]);
                        pass.dispatch_workgroups(n[0], n[1], n[2]);
                        i += 1;
                    }
                }
            }
        }
        let mut at = 0u64;
        for (b, off, len) in reads {
            if *len > 0 {
                enc.copy_buffer_to_buffer(
                    &b.buf,
                    (*off * 4) as u64,
                    &staging,
                    at,
                    Some((*len * 4) as u64),
                );
            }
            at += (*len * 4) as u64;
        }
        let index = g.queue.submit([enc.finish()]);
        if total == 0 {
            wait(g, index)?;
            return Ok(reads.iter().map(|_| Vec::new()).collect());
        }

        let (tx, rx) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        wait(g, index)?;
        rx.recv()
            .map_err(|_| gpu_error(GpuFailure::Device, "the readback was dropped"))?
            .map_err(|e| gpu_error(GpuFailure::Device, format!("reading results back: {e}")))?;
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| gpu_error(GpuFailure::Device, format!("reading results: {e}")))?;
            let mut at = 0;
            reads
                .iter()
                .map(|&(_, _, len)| {
                    let mut v = vec![T::zeroed(); len];
                    bytemuck::cast_slice_mut::<T, u8>(&mut v)
                        .copy_from_slice(&view[at..][..len * 4]);
                    at += len * 4;
                    v
                })
                .collect()
        };
        staging.unmap();
        Ok(out)
    }
}

fn wait(g: &Gpu, index: wgpu::SubmissionIndex) -> Result<()> {
    g.device
        .poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        })
        .map(|_| ())
        .map_err(|e| gpu_error(GpuFailure::Device, format!("{}: {e}", g.info.name)))
}
