package org.shira.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.zip.CRC32;

/** An exported base (docs/MANIFEST.md) opened for patching on one runtime: the manifest read and checked, every
 *  placement of that runtime located inside the bytes the engine reads and CRC-checked there ("Integrity"), and
 *  one {@link WeightPatcher} over them.
 *
 *  The caller owns the bytes and hands them in: for ONNX Runtime the contents of weights.safetensors in a direct
 *  buffer that the engine's weight tensors alias; for ExecuTorch a writable mapping of a private copy of
 *  model.pte that the engine loads from. Nothing here touches Android, ONNX Runtime or ExecuTorch. */
public final class PatchableBase {
    public static final String ONNXRUNTIME = "onnxruntime";
    public static final String EXECUTORCH = "executorch";
    /** Manifest versions this reader reads: 2 and 3 (float placements). Version 4 (quantized) is refused. */
    public static final List<Long> READS = Collections.unmodifiableList(java.util.Arrays.asList(2L, 3L));

    public final String runtime;
    public final String fingerprint;
    /** The engine's file, from the manifest's artifacts: model.onnx or model.pte. */
    public final String program;
    /** ONNX Runtime only: the weights file (weights.safetensors); null for ExecuTorch. */
    public final String weightsFile;
    /** ONNX Runtime: the export's model with every weight an initializer, which a bake optimizes
     *  (artifacts.onnxruntime.prepacked), or null (an older export, or ExecuTorch). */
    public final String prepackedProgram;
    /** Torch name -> torch shape of every patchable tensor (what adapters are checked against). */
    public final Map<String, long[]> shapes;
    /** Placement name -> its stored shape: for ONNX Runtime the graph inputs to feed at every run. */
    public final Map<String, long[]> placements;
    /** Placement name -> float32 view into the caller's bytes; patches write through it. */
    public final Map<String, FloatBuffer> buffers;
    /** ExecuTorch placements that XNNPACK packed at method load (`reload: true`): a write needs a reload. */
    public final Set<String> reload;
    public final WeightPatcher patcher;
    /** The model's own inputs, by name, in order (the manifest's `inputs`): the image for the style net. */
    public final List<String> inputs;

    private PatchableBase(String runtime, String fingerprint, String program, String weightsFile,
                          String prepackedProgram, List<String> inputs,
                          Map<String, long[]> shapes, Map<String, long[]> placements, Map<String, FloatBuffer> buffers,
                          Set<String> reload, WeightPatcher patcher) {
        this.runtime = runtime; this.fingerprint = fingerprint; this.program = program; this.weightsFile = weightsFile;
        this.prepackedProgram = prepackedProgram;
        this.inputs = Collections.unmodifiableList(inputs);
        this.shapes = Collections.unmodifiableMap(shapes); this.placements = Collections.unmodifiableMap(placements);
        this.buffers = Collections.unmodifiableMap(buffers); this.reload = Collections.unmodifiableSet(reload);
        this.patcher = patcher;
    }

    /** Read the manifest text (from `manifestSource`) for `runtime` and locate its placements in `bytes` (the
     *  weights file for ONNX Runtime, the program for ExecuTorch; named `bytesSource` in errors). */
    public static PatchableBase open(String manifestText, String manifestSource, String runtime, ByteBuffer bytes,
                                     String bytesSource) throws AdapterFormatException {
        if (!runtime.equals(ONNXRUNTIME) && !runtime.equals(EXECUTORCH))
            throw new AdapterFormatException("unknown runtime " + runtime + " (onnxruntime or executorch)");
        Object raw;
        try {
            raw = Json.parse(manifestText);
        } catch (IllegalArgumentException e) {
            throw bad(manifestSource, "not valid JSON: " + e.getMessage());
        }
        Map<?, ?> m = map(raw, manifestSource, "the manifest");
        if (!"shira-manifest".equals(m.get("format")))
            throw bad(manifestSource, "not a SHiRA manifest (format=" + m.get("format") + ")");
        Object version = m.get("format_version");
        if (!READS.contains(version))
            throw bad(manifestSource, "manifest version " + version + " is not read by this app (it reads "
                    + READS + "; version 4 is a quantized base, which this demo does not patch)");
        Object fp = m.get("base_fingerprint");
        if (!(fp instanceof String) || !((String) fp).matches("sha256:[0-9a-f]{64}"))
            throw bad(manifestSource, "base_fingerprint must be 'sha256:' and 64 lowercase hex digits");
        Map<?, ?> artifacts = map(map(m.get("artifacts"), manifestSource, "artifacts").get(runtime), manifestSource,
                "artifacts." + runtime + " (was the base exported for " + runtime + "?)");
        String program = fileName(artifacts.get("patchable"), manifestSource, "artifacts." + runtime + ".patchable");
        String weightsFile = runtime.equals(ONNXRUNTIME)
                ? fileName(artifacts.get("weights"), manifestSource, "artifacts.onnxruntime.weights") : null;
        String prepacked = runtime.equals(ONNXRUNTIME) && artifacts.get("prepacked") != null
                ? fileName(artifacts.get("prepacked"), manifestSource, "artifacts.onnxruntime.prepacked") : null;
        List<String> inputs = new ArrayList<>();
        if (!(m.get("inputs") instanceof List)) throw bad(manifestSource, "inputs must be a list");
        for (Object o : (List<?>) m.get("inputs")) {
            Object n = map(o, manifestSource, "an input").get("name");
            if (!(n instanceof String)) throw bad(manifestSource, "an input has no name");
            inputs.add((String) n);
        }
        Safetensors st = runtime.equals(ONNXRUNTIME) ? Safetensors.parse(bytes, bytesSource) : null;

        Map<String, long[]> shapes = new LinkedHashMap<>();
        Map<String, long[]> stored = new LinkedHashMap<>();
        Map<String, FloatBuffer> buffers = new LinkedHashMap<>();
        Set<String> reload = new LinkedHashSet<>();
        Map<String, List<WeightPatcher.Placement>> placements = new LinkedHashMap<>();
        Map<?, ?> tensors = map(m.get("tensors"), manifestSource, "tensors");
        if (tensors.isEmpty()) throw bad(manifestSource, "lists no patchable tensor");
        for (Map.Entry<?, ?> t : tensors.entrySet()) {
            String tname = (String) t.getKey();
            Map<?, ?> info = map(t.getValue(), manifestSource, "tensor " + tname);
            long[] torchShape = shape(info.get("shape"), manifestSource, "tensor " + tname);
            shapes.put(tname, torchShape);
            Object list = map(info.get("placements"), manifestSource, "tensor " + tname + " placements").get(runtime);
            if (!(list instanceof List) || ((List<?>) list).isEmpty())
                throw bad(manifestSource, "tensor " + tname + " has no " + runtime + " placement");
            List<WeightPatcher.Placement> ps = new ArrayList<>();
            for (Object o : (List<?>) list) {
                Map<?, ?> p = map(o, manifestSource, "a placement of " + tname);
                String where = "placement of " + tname;
                if (p.get("quant") != null) throw bad(manifestSource, where + " is quantized; this demo patches float32 bases");
                if (!(p.get("name") instanceof String)) throw bad(manifestSource, where + ": name must be a string");
                String name = (String) p.get("name");
                long[] shape = shape(p.get("shape"), manifestSource, where);
                if (Codings.numel(shape) != Codings.numel(torchShape))
                    throw bad(manifestSource, where + " " + name + ": stored shape and torch shape differ in size");
                Object layout = p.get("layout");
                if (!"identity".equals(layout) && !"transpose2d".equals(layout) && !"channels_last".equals(layout))
                    throw bad(manifestSource, where + " " + name + ": unknown layout " + layout);
                float[] scale = null;
                if (p.get("channel_scale") != null) {
                    if (!(p.get("channel_scale") instanceof List)) throw bad(manifestSource, where + ": channel_scale must be a list");
                    List<?> cs = (List<?>) p.get("channel_scale");
                    if (cs.size() != torchShape[0]) throw bad(manifestSource, where + ": channel_scale needs one number per output channel");
                    scale = new float[cs.size()];
                    for (int i = 0; i < scale.length; i++) {
                        if (!(cs.get(i) instanceof Number)) throw bad(manifestSource, where + ": channel_scale must hold numbers");
                        scale[i] = (float) ((Number) cs.get(i)).doubleValue();
                    }
                }
                long begin, end, offset = -1;
                if (st != null) {
                    Safetensors.Entry e = st.tensors.get(name);
                    if (e == null) throw bad(bytesSource, "no tensor " + name + " (the manifest's " + where + ")");
                    if (!e.dtype.equals("F32") || !java.util.Arrays.equals(e.shape, shape))
                        throw bad(bytesSource, "tensor " + name + " is not float32 " + java.util.Arrays.toString(shape));
                    begin = e.begin; end = e.end;
                } else {
                    if (!(p.get("offset") instanceof Long)) throw bad(manifestSource, where + ": offset must be an integer");
                    offset = (Long) p.get("offset");
                    begin = offset; end = offset + 4 * Codings.numel(shape);
                    if (begin < 0 || end > bytes.capacity())
                        throw bad(bytesSource, "weight " + tname + " at byte " + begin + " (+" + (end - begin)
                                + ") lies outside the " + bytes.capacity() + "-byte program (truncated file?)");
                    if (Boolean.TRUE.equals(p.get("reload"))) reload.add(name);
                }
                if (buffers.containsKey(name)) throw bad(manifestSource, "placement " + name + " is listed twice");
                if (!(p.get("crc32") instanceof Long)) throw bad(manifestSource, where + " " + name + ": crc32 missing");
                long want = (Long) p.get("crc32");
                String record = tname + "|" + name + "|" + layout + "|" + dims(shape) + "|" + dims(torchShape) + "|"
                        + (offset >= 0 ? Long.toString(offset) : "") + "\n";
                if (crc(record, scale, bytes, begin, end) != want)
                    throw bad(bytesSource, "weight " + tname + " (" + name + ") does not match the manifest's checksum: "
                            + "this file is not the one exported with " + manifestSource);
                buffers.put(name, Safetensors.region(bytes, begin, end));
                stored.put(name, shape);
                ps.add(new WeightPatcher.Placement(name, (String) layout, torchShape, scale));
            }
            placements.put(tname, ps);
        }
        return new PatchableBase(runtime, (String) fp, program, weightsFile, prepacked, inputs, shapes, stored, buffers, reload,
                new WeightPatcher(buffers, placements));
    }

    /** Validate `blob` in full (checksums, this base's fingerprint, shapes) and register it with the patcher. */
    public AdapterBlob loadAdapter(String name, byte[] blob, String source) throws AdapterFormatException {
        AdapterBlob a = AdapterBlob.read(blob, source, fingerprint, shapes);
        patcher.load(name, a);
        return a;
    }

    /** Whether writing these buffers requires the engine to load its method again. */
    public boolean needsReload(Set<String> changed) {
        for (String b : changed) if (reload.contains(b)) return true;
        return false;
    }

    private static long crc(String record, float[] scale, ByteBuffer bytes, long begin, long end) {
        CRC32 c = new CRC32();
        c.update(record.getBytes(StandardCharsets.UTF_8));
        if (scale != null) {
            ByteBuffer b = ByteBuffer.allocate(4 * scale.length).order(ByteOrder.LITTLE_ENDIAN);
            for (float f : scale) b.putFloat(f);
            c.update(b.array());
        }
        ByteBuffer d = bytes.duplicate();
        d.limit((int) end).position((int) begin);
        c.update(d);
        return c.getValue();
    }

    private static String dims(long[] shape) {
        StringBuilder s = new StringBuilder();
        for (int i = 0; i < shape.length; i++) s.append(i == 0 ? "" : "x").append(shape[i]);
        return s.toString();
    }

    private static Map<?, ?> map(Object o, String source, String what) throws AdapterFormatException {
        if (!(o instanceof Map)) throw bad(source, what + " must be a JSON object");
        return (Map<?, ?>) o;
    }

    private static long[] shape(Object o, String source, String what) throws AdapterFormatException {
        if (!(o instanceof List) || ((List<?>) o).isEmpty() || ((List<?>) o).size() > 8)
            throw bad(source, what + ": shape must be 1 to 8 positive integers");
        List<?> l = (List<?>) o;
        long[] out = new long[l.size()];
        long n = 1;
        for (int i = 0; i < out.length; i++) {
            if (!(l.get(i) instanceof Long) || (Long) l.get(i) < 1 || (Long) l.get(i) > Integer.MAX_VALUE)
                throw bad(source, what + ": shape must be 1 to 8 positive integers");
            out[i] = (Long) l.get(i);
            n *= out[i];
            if (n > Integer.MAX_VALUE / 4) throw bad(source, what + ": more than 2^29 entries");
        }
        return out;
    }

    private static String fileName(Object o, String source, String what) throws AdapterFormatException {
        if (!(o instanceof String) || ((String) o).isEmpty() || ((String) o).contains("/") || ((String) o).contains("\\")
                || o.equals(".") || o.equals(".."))
            throw bad(source, what + " must be a plain file name");
        return (String) o;
    }

    private static AdapterFormatException bad(String source, String msg) {
        return new AdapterFormatException(source + ": " + msg);
    }
}
