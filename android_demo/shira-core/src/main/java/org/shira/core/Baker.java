package org.shira.core;

import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;

/** The bake on the phone (docs/INPLACE.md, "The bake"): the Java twin of the Python runtime's inplace/bake.py for float
 *  placements. It asks ONNX Runtime three times to optimize the export's model_prepacked.onnx and save it with its
 *  packed weights in one data file (baked.onnx + baked.bin): once with the real weights, and once each with every
 *  patchable entry replaced by a float32 code of its row and of its column (CODE_BASE + row_start[t] + f / 4096,
 *  CODE_BASE + 4096 t + f % 4096). The coded bakes must lay the file out as the real one does; decoding them gives,
 *  for every placement, every region of baked.bin that holds a copy of it and the position of each entry there.
 *  The map is proven on the real file bit for bit and written as bake.json (format 2), with the same position
 *  forms inplace/bake.py chooses, so {@link BakedWeights} (and the Python runtime) read it.
 *
 *  Everything here is plain Java; the one thing it needs from ONNX Runtime is {@link Optimizer}, which the app
 *  implements with ORT's Java API (not in this library, which has no ORT dependency; this code compiles against
 *  android_demo/compile_check's stubs, and has not run here: no ORT Java jar on the host):
 *  <pre>
 *  public void bake(File source, File outDir) throws IOException {
 *      try (OrtSession.SessionOptions o = new OrtSession.SessionOptions()) {
 *          o.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT);
 *          o.setOptimizedModelFilePath(new File(outDir, Baker.BAKED_MODEL).getPath());
 *          for (Map.Entry&lt;String, String&gt; e : Baker.OPTIMIZER_CONFIG.entrySet()) o.addConfigEntry(e.getKey(), e.getValue());
 *          env.createSession(source.getPath(), o).close();
 *      } catch (OrtException e) {
 *          throw new IOException("ONNX Runtime cannot bake " + source + ": " + e.getMessage(), e);
 *      }
 *  }</pre>
 *
 *  What is left to the caller (it needs ORT runs, which this class does not do): inplace/bake.py's last two steps, i.e.
 *  load the baked model as it will be served (ORT's optimizations off, bake.json's session_config, which is
 *  {} here), run it once on the export's sample, write a random patch through {@link BakedWeights} into the app's
 *  own copy of baked.bin, and compare the output with the patchable engine (model.onnx fed the same patched
 *  weights); if they differ by more than 1e-4 of the output's scale the base cannot be patched in place (delete
 *  the bake and fall back). On ARM, inplace/bake.py retries a failed bake with mlas.disable_kleidiai = 1; this class
 *  writes session_config {} and does not retry.
 *
 *  Quantized placements (bytes, nibbles, derived sums) are refused ({@link UnsupportedOperationException}): their
 *  digit passes (inplace/quantized.py) are not ported. A damaged export is an {@link AdapterFormatException} (the
 *  placements' CRC-32s are checked first, as inplace/bake.py does); a base that cannot be baked is a
 *  {@link CannotBakeException} (cache the reason, do not retry at every start). Regions and weights files of
 *  2 GiB and more are not mapped here (a CannotBakeException). */
public final class Baker {
    public static final String BAKED_MODEL = "baked.onnx", BAKED_DATA = "baked.bin", MAP_FILE = "bake.json";
    /** The bake.json format written (docs/INPLACE.md). */
    public static final long FORMAT = 2;
    /** Codes live in [2^23, 2^24): exact integers in float32, far from any real weight. */
    public static final int CODE_BASE = 1 << 23;
    public static final int ROW_WIDTH = 4096;
    /** Initializers below this many bytes stay inside baked.onnx (inplace/bake.py's MIN_EXTERNAL_BYTES). */
    public static final int MIN_EXTERNAL_BYTES = 64;
    /** The session config entries every {@link Optimizer} run must set (besides ALL_OPT and the optimized model
     *  path outDir/baked.onnx): exactly bake._bake_once's. */
    public static final Map<String, String> OPTIMIZER_CONFIG;

    static {
        Map<String, String> c = new LinkedHashMap<>();
        c.put("session.optimized_model_external_initializers_file_name", BAKED_DATA);
        c.put("session.optimized_model_external_initializers_min_size_in_bytes", Integer.toString(MIN_EXTERNAL_BYTES));
        c.put("session.save_external_prepacked_constant_initializers", "1");
        OPTIMIZER_CONFIG = Collections.unmodifiableMap(c);
    }

    /** ONNX Runtime, asked to optimize one model and save it: graph optimization level ALL (ENABLE_ALL), the
     *  optimized model written to outDir/baked.onnx, and the session config entries {@link #OPTIMIZER_CONFIG}.
     *  Throws (an IOException) when ORT cannot load the model. */
    public interface Optimizer {
        void bake(File sourceModel, File outDir) throws IOException;
    }

    /** Told each step as it ends, e.g. "baked the base in 0.4s", "baked the row positions in 0.3s". */
    public interface Progress {
        void step(String message);
    }

    /** This base cannot be served in place on this ONNX Runtime and CPU; the message says why. */
    public static final class CannotBakeException extends IOException {
        private static final long serialVersionUID = 1L;

        public CannotBakeException(String message) { super(message); }
    }

    private Baker() {}

    /** Bake the export in `exportDir` (its manifest's text: `manifestText`) into `outDir`, which must not exist: the
     *  bake is made in a temporary directory beside it and renamed into place once bake.json is written, so a
     *  reader sees a whole bake or none. `ortVersion` is written as bake.json's "onnxruntime" (the version the
     *  Optimizer runs). Returns what bake.json holds. */
    public static Map<String, Object> bake(File exportDir, String manifestText, File outDir, Optimizer ort,
                                           String ortVersion, Progress progress)
            throws IOException, AdapterFormatException {
        long t0 = System.nanoTime();
        String[] files = onnxFiles(manifestText);
        String prepacked = files[0], weightsName = files[1];
        File weightsFile = new File(exportDir, weightsName);
        PatchableBase base;
        ByteBuffer weights;
        try (FileChannel ch = FileChannel.open(weightsFile.toPath(), StandardOpenOption.READ)) {
            if (ch.size() > Integer.MAX_VALUE)
                throw new CannotBakeException(weightsFile + ": weights files of 2 GiB and more are not baked here");
            weights = ch.map(FileChannel.MapMode.READ_ONLY, 0, ch.size());
        }
        base = PatchableBase.open(manifestText, "manifest.json", PatchableBase.ONNXRUNTIME, weights, weightsName);
        List<String> names = new ArrayList<>(base.placements.keySet());
        int[] starts = new int[names.size()];
        long row = 0;
        for (int i = 0; i < names.size(); i++) {
            starts[i] = (int) Math.min(row, Integer.MAX_VALUE);
            row += (Codings.numel(base.placements.get(names.get(i))) + ROW_WIDTH - 1) / ROW_WIDTH;
        }
        if (row >= CODE_BASE || (long) names.size() * ROW_WIDTH >= CODE_BASE)
            throw new CannotBakeException(exportDir + ": too many patchable weights to code positions in float32");

        File target = outDir.getAbsoluteFile(), parent = target.getParentFile();
        if (target.exists()) throw new IOException(target + " already exists (bake into a new directory)");
        if (!parent.isDirectory() && !parent.mkdirs()) throw new IOException(parent + ": cannot create it");
        File tmp = Files.createTempDirectory(parent.toPath(), ".bake-").toFile();
        boolean done = false;
        try {
            File source = new File(exportDir, prepacked);
            ort.bake(source, tmp);
            progress.step(String.format(Locale.ROOT, "baked the base in %.1fs", (System.nanoTime() - t0) / 1e9));
            if (!new File(tmp, BAKED_DATA).exists())
                throw new CannotBakeException(exportDir + ": ONNX Runtime kept every weight inside the optimized model "
                        + "(all below " + MIN_EXTERNAL_BYTES + " bytes); they cannot be patched in place");
            OnnxRegions real = OnnxRegions.read(Files.readAllBytes(new File(tmp, BAKED_MODEL).toPath()),
                    new File(tmp, BAKED_MODEL).getPath());
            Map<String, File> coded = new LinkedHashMap<>();
            for (String which : new String[] {"row", "col"}) {
                long t1 = System.nanoTime();
                File src = new File(tmp, ".coded-" + which + "-source"), out = new File(tmp, ".coded-" + which);
                if (!src.mkdir() || !out.mkdir()) throw new IOException(tmp + ": cannot create a directory in it");
                codedSource(exportDir, prepacked, weightsName, names, starts, which, src);
                ort.bake(new File(src, prepacked), out);
                deleteTree(src);
                File model = new File(out, BAKED_MODEL);
                if (!OnnxRegions.read(Files.readAllBytes(model.toPath()), model.getPath()).regions.equals(real.regions))
                    throw new CannotBakeException(source + ": ONNX Runtime lays the weights out differently when their "
                            + "values change; this base cannot be patched in place");
                coded.put(which, new File(out, BAKED_DATA));
                progress.step(String.format(Locale.ROOT, "baked the %s positions in %.1fs", which,
                        (System.nanoTime() - t1) / 1e9));
            }
            Safetensors st = Safetensors.parse(weights, weightsName);
            Map<String, Object> spec = map(exportDir, base, names, st, weights, real, coded, new File(tmp, BAKED_DATA),
                    new File(tmp, "maps"), ortVersion);
            for (File f : coded.values()) deleteTree(f.getParentFile());
            Files.write(new File(tmp, MAP_FILE).toPath(), toJson(spec).getBytes(StandardCharsets.UTF_8));
            Files.move(tmp.toPath(), target.toPath(), StandardCopyOption.ATOMIC_MOVE);
            done = true;
            progress.step(String.format(Locale.ROOT, "mapped %d weights in %.1fs", names.size(),
                    (System.nanoTime() - t0) / 1e9));
            return spec;
        } finally {
            if (!done) deleteTree(tmp);
        }
    }

    /** {prepacked model, weights file} of the manifest's onnxruntime artifacts; quantized placements refused. */
    private static String[] onnxFiles(String manifestText) throws AdapterFormatException, CannotBakeException {
        Object raw;
        try {
            raw = Json.parse(manifestText);
        } catch (IllegalArgumentException e) {
            throw new AdapterFormatException("manifest.json: not valid JSON: " + e.getMessage());
        }
        Map<?, ?> m = raw instanceof Map ? (Map<?, ?>) raw : Collections.emptyMap();
        if (m.get("tensors") instanceof Map)
            for (Map.Entry<?, ?> t : ((Map<?, ?>) m.get("tensors")).entrySet()) {
                Object places = t.getValue() instanceof Map ? ((Map<?, ?>) t.getValue()).get("placements") : null;
                Object list = places instanceof Map ? ((Map<?, ?>) places).get(PatchableBase.ONNXRUNTIME) : null;
                if (list instanceof List)
                    for (Object p : (List<?>) list)
                        if (p instanceof Map && ((Map<?, ?>) p).get("quant") != null)
                            throw new UnsupportedOperationException("manifest.json: weight " + t.getKey() + " is quantized ("
                                    + ((Map<?, ?>) p).get("quant") + "): quantized placements are not baked from Java yet "
                                    + "(inplace/quantized.py's digit passes are not ported)");
            }
        if (Long.valueOf(4).equals(m.get("format_version")))
            throw new UnsupportedOperationException("manifest.json: a quantized base (manifest version 4) is not baked "
                    + "from Java yet");
        Object arts = m.get("artifacts") instanceof Map ? ((Map<?, ?>) m.get("artifacts")).get(PatchableBase.ONNXRUNTIME) : null;
        Object prepacked = arts instanceof Map ? ((Map<?, ?>) arts).get("prepacked") : null;
        Object weights = arts instanceof Map ? ((Map<?, ?>) arts).get("weights") : null;
        if (!(weights instanceof String) || !plainName((String) weights))
            throw new AdapterFormatException("manifest.json: artifacts.onnxruntime.weights must be a plain file name");
        if (prepacked == null)
            throw new CannotBakeException("manifest.json: no model_prepacked.onnx to bake (exported by an older shira-export)");
        if (!(prepacked instanceof String) || !plainName((String) prepacked))
            throw new AdapterFormatException("manifest.json: artifacts.onnxruntime.prepacked must be a plain file name");
        return new String[] {(String) prepacked, (String) weights};
    }

    private static boolean plainName(String s) {
        return !s.isEmpty() && !s.contains("/") && !s.contains("\\") && !s.equals(".") && !s.equals("..");
    }

    /** bake._coded_source: a copy of the model in `into` beside a copy of the weights file whose every patchable
     *  entry holds its code for pass `which`; the other files the model's external data names are linked. */
    private static void codedSource(File exportDir, String model, String weightsName, List<String> names, int[] starts,
                                    String which, File into) throws IOException, AdapterFormatException {
        File source = new File(exportDir, model);
        Files.copy(source.toPath(), new File(into, model).toPath());
        for (String loc : OnnxRegions.read(Files.readAllBytes(source.toPath()), source.getPath()).locations) {
            if (loc.equals(weightsName)) continue;
            if (!plainName(loc)) throw new CannotBakeException(source + ": external data " + loc + " is not beside it");
            File from = new File(exportDir, loc).getAbsoluteFile(), to = new File(into, loc);
            try {
                Files.createSymbolicLink(to.toPath(), from.toPath());
            } catch (IOException | UnsupportedOperationException e) {
                Files.copy(from.toPath(), to.toPath());
            }
        }
        File weights = new File(into, weightsName);
        Files.copy(new File(exportDir, weightsName).toPath(), weights.toPath());
        try (FileChannel ch = FileChannel.open(weights.toPath(), StandardOpenOption.READ, StandardOpenOption.WRITE)) {
            MappedByteBuffer mm = ch.map(FileChannel.MapMode.READ_WRITE, 0, ch.size());
            Safetensors st = Safetensors.parse(mm, weights.getPath());
            for (int i = 0; i < names.size(); i++) {
                FloatBuffer w = st.floats(mm, names.get(i));
                for (int f = 0, n = w.capacity(); f < n; f++) {
                    int c = which.equals("row") ? f / ROW_WIDTH + starts[i] : f % ROW_WIDTH + i * ROW_WIDTH;
                    w.put(f, (float) (c + CODE_BASE));
                }
            }
            mm.force();
        }
    }

    /** One copy of a placement found in the coded bakes: its region and positions[f] = entry f's slot there. */
    private static final class Found {
        final OnnxRegions.Region region;
        final int[] positions;

        Found(OnnxRegions.Region region, int[] positions) { this.region = region; this.positions = positions; }
    }

    /** Decode, prove on the real file and describe every copy of every placement (learn_layout's last part). */
    private static Map<String, Object> map(File exportDir, PatchableBase base, List<String> names, Safetensors st,
                                           ByteBuffer weights, OnnxRegions real, Map<String, File> coded, File realData,
                                           File mapsDir, String ortVersion) throws IOException, AdapterFormatException {
        Map<String, List<Found>> found;
        try (FileChannel rows = FileChannel.open(coded.get("row").toPath(), StandardOpenOption.READ);
             FileChannel cols = FileChannel.open(coded.get("col").toPath(), StandardOpenOption.READ);
             FileChannel data = FileChannel.open(realData.toPath(), StandardOpenOption.READ)) {
            found = decode(real.regions, rows, cols, data, base, names);
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("format", FORMAT);
            out.put("onnxruntime", ortVersion);
            out.put("session_config", new LinkedHashMap<String, Object>());
            Map<String, Object> placements = new LinkedHashMap<>();
            out.put("placements", placements);
            if (!mapsDir.mkdir()) throw new IOException(mapsDir + ": cannot create it");
            for (String name : names) {
                List<Object> copies = new ArrayList<>();
                Safetensors.Entry e = st.tensors.get(name);
                IntBuffer stored = slice(weights, e.begin, e.end - e.begin).asIntBuffer();
                List<Found> fs = found.containsKey(name) ? found.get(name) : Collections.<Found>emptyList();
                for (Found fd : fs) {
                    OnnxRegions.Region r = fd.region;
                    boolean packedElsewhere = false;
                    for (OnnxRegions.Region o : real.regions)
                        packedElsewhere |= o.initializer.equals(r.initializer) && o.kind.equals("prepacked");
                    Integer uses = real.uses.get(r.initializer);
                    if (r.kind.equals("data") && packedElsewhere && (uses == null || uses <= 1))
                        continue; // the only consumer reads the packed copy: the plain one is never read again
                    IntBuffer bits = region(data, r).asIntBuffer();
                    for (int f = 0; f < fd.positions.length; f++)
                        if (bits.get(fd.positions[f]) != stored.get(f))
                            throw new CannotBakeException(exportDir + ": weight " + name + ": ONNX Runtime transforms its "
                                    + "values when it optimizes (" + r.initializer + "); it cannot be patched in place");
                    Map<String, Object> copy = new LinkedHashMap<>();
                    copy.put("region", r.initializer);
                    copy.put("kind", r.kind);
                    copy.put("offset", r.offset);
                    copy.put("length", r.length);
                    Object form = PositionForms.describe(fd.positions, base.placements.get(name));
                    if (form == null) { // no known form: the whole map, on disk
                        String[] listed = mapsDir.list();
                        String file = (listed == null ? 0 : listed.length) + ".npy";
                        PositionForms.writeNpy(new File(mapsDir, file), fd.positions, r.length >= 1L << 34);
                        form = "maps/" + file;
                    }
                    copy.put("positions", form);
                    copies.add(copy);
                }
                if (copies.isEmpty())
                    throw new CannotBakeException(exportDir + ": weight " + name + " is not in the baked data file (below "
                            + MIN_EXTERNAL_BYTES + " bytes, or folded into another constant); it cannot be patched in place");
                float absmax = 0;
                FloatBuffer w = base.buffers.get(name);
                for (int f = 0; f < w.capacity(); f++) absmax = Math.max(absmax, Math.abs(w.get(f)));
                if (Float.isNaN(absmax) || Float.isInfinite(absmax))
                    throw new CannotBakeException(exportDir + ": weight " + name + " holds NaN or infinity");
                Map<String, Object> p = new LinkedHashMap<>();
                p.put("copies", copies);
                p.put("absmax", (double) absmax);
                placements.put(name, p);
            }
            return out;
        }
    }

    /** bake._decode: placement name -> its copies, in region order. A slot holds a code only where both passes read
     *  as one and the real bake differs (other bytes are the same in every bake and may read as a code by chance).
     *  The column pass names the tensor, and the row pass must agree; every entry must be in a region exactly once. */
    private static Map<String, List<Found>> decode(List<OnnxRegions.Region> regions, FileChannel rowData,
                                                   FileChannel colData, FileChannel realData, PatchableBase base,
                                                   List<String> names) throws IOException {
        int count = names.size();
        long[] sizes = new long[count], rowStarts = new long[count], rowEnds = new long[count];
        long row = 0;
        for (int i = 0; i < count; i++) {
            sizes[i] = Codings.numel(base.placements.get(names.get(i)));
            rowStarts[i] = row;
            row += (sizes[i] + ROW_WIDTH - 1) / ROW_WIDTH;
            rowEnds[i] = row;
        }
        Map<String, List<Found>> found = new LinkedHashMap<>();
        for (OnnxRegions.Region region : regions) {
            FloatBuffer rows = region(rowData, region).asFloatBuffer(), cols = region(colData, region).asFloatBuffer();
            FloatBuffer real = region(realData, region).asFloatBuffer();
            int slots = rows.capacity(), hits = 0;
            int[] hitAt = new int[16], hitRow = new int[16], hitCol = new int[16];
            TreeMap<Integer, Integer> tensors = new TreeMap<>(); // t -> how many hits
            for (int e = 0; e < slots; e++) {
                float rv = rows.get(e), cv = cols.get(e);
                if (!(rv >= CODE_BASE && rv < 2f * CODE_BASE && cv >= CODE_BASE && cv < 2f * CODE_BASE)
                        || !(real.get(e) != rv)) continue;
                if (hits == hitAt.length) {
                    hitAt = java.util.Arrays.copyOf(hitAt, 2 * hits);
                    hitRow = java.util.Arrays.copyOf(hitRow, 2 * hits);
                    hitCol = java.util.Arrays.copyOf(hitCol, 2 * hits);
                }
                hitAt[hits] = e;
                hitRow[hits] = (int) rv - CODE_BASE; // exact: floats in [2^23, 2^24) are integers
                hitCol[hits] = (int) cv - CODE_BASE;
                Integer k = tensors.get(hitCol[hits] / ROW_WIDTH);
                tensors.put(hitCol[hits] / ROW_WIDTH, k == null ? 1 : k + 1);
                hits++;
            }
            for (Map.Entry<Integer, Integer> te : tensors.entrySet()) { // ascending t, as np.unique
                int ti = te.getKey();
                boolean agree = ti < count;
                for (int h = 0; h < hits && agree; h++)
                    if (hitCol[h] / ROW_WIDTH == ti) agree = hitRow[h] >= rowStarts[ti] && hitRow[h] < rowEnds[ti];
                if (!agree)
                    throw new CannotBakeException("region " + region.initializer + ": the row and column passes disagree "
                            + "(ONNX Runtime mixes values when it optimizes); this base cannot be patched in place");
                int n = (int) sizes[ti];
                int[] positions = new int[n];
                java.util.Arrays.fill(positions, -1);
                boolean once = te.getValue() == n;
                for (int h = 0; h < hits && once; h++) {
                    if (hitCol[h] / ROW_WIDTH != ti) continue;
                    long f = (hitRow[h] - rowStarts[ti]) * ROW_WIDTH + hitCol[h] % ROW_WIDTH;
                    once = f < n && positions[(int) f] < 0;
                    if (once) positions[(int) f] = hitAt[h];
                }
                if (!once)
                    throw new CannotBakeException("region " + region.initializer + ": holds part of weight " + names.get(ti)
                            + " (" + te.getValue() + " of " + n + " entries); it cannot be patched in place");
                String name = names.get(ti);
                if (!found.containsKey(name)) found.put(name, new ArrayList<Found>());
                found.get(name).add(new Found(region, positions));
            }
        }
        return found;
    }

    /** The region's whole floats (length rounded down to 4 bytes), little-endian, read-only. */
    private static ByteBuffer region(FileChannel ch, OnnxRegions.Region r) throws IOException {
        long bytes = r.length - r.length % 4;
        if (bytes > Integer.MAX_VALUE)
            throw new CannotBakeException("region " + r.initializer + ": regions of 2 GiB and more are not baked here");
        if (r.offset + bytes > ch.size())
            throw new IOException("region " + r + " lies outside the baked data file (" + ch.size() + " bytes)");
        return ch.map(FileChannel.MapMode.READ_ONLY, r.offset, bytes).order(ByteOrder.LITTLE_ENDIAN);
    }

    private static ByteBuffer slice(ByteBuffer buf, long begin, long length) {
        ByteBuffer d = buf.duplicate();
        d.limit((int) (begin + length)).position((int) begin);
        return d.slice().order(ByteOrder.LITTLE_ENDIAN);
    }

    private static void deleteTree(File f) {
        File[] kids = Files.isSymbolicLink(f.toPath()) ? null : f.listFiles();
        if (kids != null) for (File k : kids) deleteTree(k);
        if (!f.delete() && f.exists()) f.deleteOnExit();
    }

    // ---- bake.json, written as Python's json.dumps(indent=1) lays it out ------------------------------------
    static String toJson(Object v) {
        StringBuilder b = new StringBuilder();
        json(b, v, "");
        return b.toString();
    }

    private static void json(StringBuilder b, Object v, String indent) {
        String inner = indent + " ";
        if (v instanceof Map) {
            Map<?, ?> m = (Map<?, ?>) v;
            if (m.isEmpty()) { b.append("{}"); return; }
            b.append("{");
            String sep = "\n";
            for (Map.Entry<?, ?> e : m.entrySet()) {
                b.append(sep).append(inner);
                string(b, (String) e.getKey());
                b.append(": ");
                json(b, e.getValue(), inner);
                sep = ",\n";
            }
            b.append("\n").append(indent).append("}");
        } else if (v instanceof List) {
            List<?> l = (List<?>) v;
            if (l.isEmpty()) { b.append("[]"); return; }
            b.append("[");
            String sep = "\n";
            for (Object o : l) {
                b.append(sep).append(inner);
                json(b, o, inner);
                sep = ",\n";
            }
            b.append("\n").append(indent).append("]");
        } else if (v instanceof String) {
            string(b, (String) v);
        } else if (v instanceof Long || v instanceof Integer) {
            b.append(v);
        } else if (v instanceof Double) {
            b.append(Double.toString((Double) v)); // finite: the caller checks
        } else {
            throw new IllegalArgumentException("not written to bake.json: " + v);
        }
    }

    private static void string(StringBuilder b, String s) {
        b.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20 || c > 0x7E) b.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
            else b.append(c);
        }
        b.append('"');
    }
}
