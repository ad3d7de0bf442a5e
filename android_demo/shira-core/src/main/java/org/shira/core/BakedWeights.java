package org.shira.core;

import java.io.Closeable;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** ONNX Runtime's own packed weights, patched where they lie: a bake (docs/INPLACE.md: baked.onnx, baked.bin,
 *  bake.json, maps/) whose data file is mapped here writable and SHARED.
 *
 *  ORT maps the regions it reads from baked.bin privately and never writes them, so every page of its mapping
 *  shows the file's current bytes (the page cache), and a float written here is read by its next run: one
 *  engine at the base's speed and memory, no graph inputs. The file must therefore be the app's own copy of the
 *  bake, never a shared cache. Writes reach the file through the page cache; the kernel writes dirty pages back
 *  when it likes (nothing here forces them), so a switch costs flash writes later, which is not measured here.
 *  A copy of a bake that a process died in the middle of patching holds a mix of states: make it again.
 *
 *  The caller keeps the patched values in a {@link WeightPatcher} over the export's weights (its FloatBuffers
 *  hold base + delta, bit for bit what the Python runtime writes) and, after each commit, copies the entries
 *  the commit touched ({@link WeightPatcher#touchedBy}) here with {@link #mirror}. As for the patcher, a write
 *  must not overlap a run. Float bakes only: a quantized copy (bytes, nibbles, derived sums) is refused. */
public final class BakedWeights implements Closeable {
    /** The bake.json format this reads (docs/INPLACE.md). */
    public static final long FORMAT = 2;

    /** One live copy of a placement: its region of the data file, and where each entry lies in it. */
    private static final class Copy {
        final FloatBuffer region;
        final Map<?, ?> form; // null: contiguous or an explicit map
        final Npy map;        // the explicit map, or null
        final long numel;     // entries the form covers (the region's size in floats where the form does not say)
        final int[] perm;     // tiles, row_groups

        Copy(FloatBuffer region, Map<?, ?> form, Npy map, long numel, int[] perm) {
            this.region = region; this.form = form; this.map = map; this.numel = numel; this.perm = perm;
        }

        /** The float index in the region of entry f (flat, in the placement's stored layout). */
        long position(int f) {
            if (f < 0 || f >= numel) throw new IndexOutOfBoundsException("entry " + f + " of " + numel);
            if (map != null) return map.get(f);
            if (form == null) return f;
            switch ((String) form.get("form")) {
                case "panels": { // MLAS's SGEMM packing of B [K, N]
                    long kTotal = num(form, "rows"), n = f % num(form, "cols"), k = f / num(form, "cols");
                    long kBlock = num(form, "k_block"), panel = num(form, "panel"), kb = k / kBlock;
                    long rows = Math.min(kTotal - kb * kBlock, kBlock);
                    return kb * kBlock * num(form, "aligned_n") + (n / panel) * rows * panel + (k % kBlock) * panel
                            + n % panel;
                }
                case "tiles":
                    return (long) (f / perm.length) * perm.length + perm[f % perm.length];
                default: { // row_groups: W [N, K], rows in groups, each row's entries chunk by chunk across its group
                    long nTotal = num(form, "rows"), cols = num(form, "cols"), group = num(form, "group");
                    long n = f / cols, k = f % cols, g = n / group, chunk = perm.length;
                    long inGroup = Math.min(group, nTotal - g * group);
                    return g * group * cols + (k / chunk) * inGroup * chunk + (n % group) * chunk + perm[(int) (k % chunk)];
                }
            }
        }
    }

    private final FileChannel channel;
    private final Map<String, List<Copy>> copies;
    private boolean closed;

    /** ONNX Runtime session config entries the bake ran with (bake.json's "session_config"): a session that opens
     *  the bake must set the same, or ORT packs anew into memory of its own. */
    public final Map<String, String> sessionConfig;

    private BakedWeights(FileChannel channel, Map<String, List<Copy>> copies, Map<String, String> sessionConfig) {
        this.sessionConfig = sessionConfig;
        this.channel = channel; this.copies = copies;
    }

    /** Read bakeDir/bake.json and map `dataFile` (the app's own copy of the bake's baked.bin) read-write, shared. */
    public static BakedWeights open(File bakeDir, File dataFile) throws IOException {
        File json = new File(bakeDir, "bake.json");
        Object raw;
        try {
            raw = Json.parse(new String(Files.readAllBytes(json.toPath()), StandardCharsets.UTF_8));
        } catch (IllegalArgumentException e) {
            throw new IOException(json + ": not valid JSON: " + e.getMessage());
        }
        Map<?, ?> spec = obj(raw, json, "the bake map");
        if (!Long.valueOf(FORMAT).equals(spec.get("format")))
            throw new IOException(json + ": bake format " + spec.get("format") + " is not read here (this reads "
                    + FORMAT + "); bake it again");
        Map<?, ?> placements = obj(spec.get("placements"), json, "placements");
        for (Map.Entry<?, ?> p : placements.entrySet())  // everything checked before anything is mapped
            for (Object c : copyList(p, json)) {
                Object unit = obj(c, json, "a copy of " + p.getKey()).get("unit");
                if (unit != null && !"float".equals(unit))
                    throw new UnsupportedOperationException(json + ": placement " + p.getKey() + " is quantized (unit "
                            + unit + "): quantized bakes are not patched from Java yet");
            }
        FileChannel ch = FileChannel.open(dataFile.toPath(), StandardOpenOption.READ, StandardOpenOption.WRITE);
        try {
            Map<String, List<Copy>> out = new LinkedHashMap<>();
            for (Map.Entry<?, ?> p : placements.entrySet()) {
                List<Copy> cs = new ArrayList<>();
                for (Object c : copyList(p, json)) cs.add(copy((String) p.getKey(), (Map<?, ?>) c, bakeDir, json, ch, dataFile));
                out.put((String) p.getKey(), cs);
            }
            Map<String, String> config = new LinkedHashMap<>();
            Object sc = spec.get("session_config");
            for (Map.Entry<?, ?> e : (sc == null ? Collections.emptyMap() : obj(sc, json, "session_config")).entrySet()) {
                if (!(e.getValue() instanceof String)) throw new IOException(json + ": session_config values must be strings");
                config.put((String) e.getKey(), (String) e.getValue());
            }
            return new BakedWeights(ch, out, Collections.unmodifiableMap(config));
        } catch (IOException | RuntimeException e) {
            ch.close();
            throw e;
        }
    }

    private static Copy copy(String name, Map<?, ?> c, File bakeDir, File json, FileChannel ch, File dataFile)
            throws IOException {
        String where = "a copy of " + name;
        if (!(c.get("offset") instanceof Long) || !(c.get("length") instanceof Long))
            throw new IOException(json + ": " + where + ": offset and length must be integers");
        long offset = (Long) c.get("offset"), length = (Long) c.get("length");
        if (offset < 0 || length < 4 || length > Integer.MAX_VALUE)
            throw new IOException(json + ": " + where + ": a region of " + length + " bytes at " + offset
                    + " (regions of 2 GiB and more are not mapped here)");
        if (offset + length > ch.size()) // mapping past the end would grow the file
            throw new IOException(dataFile + ": " + where + " lies outside the file (truncated, or not this bake's?)");
        FloatBuffer region = ch.map(FileChannel.MapMode.READ_WRITE, offset, length).order(ByteOrder.LITTLE_ENDIAN)
                .asFloatBuffer();
        Object pos = c.get("positions");
        if ("contiguous".equals(pos)) return new Copy(region, null, null, region.capacity(), null);
        if (pos instanceof String) {
            String rel = (String) pos;
            if (!rel.matches("maps/[A-Za-z0-9_.-]+\\.npy") || rel.contains(".."))
                throw new IOException(json + ": " + where + ": positions " + rel + " is not maps/<j>.npy");
            Npy map = Npy.open(new File(bakeDir, rel));
            return new Copy(region, null, map, map.size, null);
        }
        Map<?, ?> form = obj(pos, json, where + ": positions");
        Object kind = form.get("form");
        if ("panels".equals(kind)) {
            need(form, json, where, "rows", "cols", "k_block", "panel", "aligned_n");
            return new Copy(region, form, null, num(form, "rows") * num(form, "cols"), null);
        }
        if (!"tiles".equals(kind) && !"row_groups".equals(kind))
            throw new IOException(json + ": " + where + ": unknown positions " + pos);
        if (!(form.get("perm") instanceof List) || ((List<?>) form.get("perm")).isEmpty())
            throw new IOException(json + ": " + where + ": " + kind + " without a perm");
        List<?> l = (List<?>) form.get("perm");
        int[] perm = new int[l.size()];
        for (int i = 0; i < perm.length; i++) {
            if (!(l.get(i) instanceof Long) || (Long) l.get(i) < 0 || (Long) l.get(i) >= perm.length)
                throw new IOException(json + ": " + where + ": perm must hold 0 to " + (perm.length - 1));
            perm[i] = (int) (long) (Long) l.get(i);
        }
        if ("tiles".equals(kind)) return new Copy(region, form, null, region.capacity(), perm);
        need(form, json, where, "rows", "cols", "group", "chunk");
        if (num(form, "chunk") != perm.length) throw new IOException(json + ": " + where + ": perm is not one chunk");
        return new Copy(region, form, null, num(form, "rows") * num(form, "cols"), perm);
    }

    /** Placement names (the manifest's onnxruntime placements) this bake holds copies of. */
    public Set<String> placements() { return Collections.unmodifiableSet(copies.keySet()); }

    /** Write entry f of `placement` as values.get(f) (the placement's buffer, flat in its stored layout) into
     *  every copy of it, for each f of `entries`. */
    public void write(String placement, int[] entries, FloatBuffer values) {
        if (closed) throw new IllegalStateException("BakedWeights is closed");
        List<Copy> cs = copies.get(placement);
        if (cs == null) throw new IllegalArgumentException("the bake has no placement " + placement);
        for (Copy c : cs)
            for (int f : entries) {
                long at = c.position(f);
                if (at >= c.region.capacity())
                    throw new IndexOutOfBoundsException(placement + ": entry " + f + " maps outside its region");
                c.region.put((int) at, values.get(f));
            }
    }

    /** After {@code patcher.commit(plans)}: write the current value of every entry the commit touched
     *  ({@code touched = patcher.touchedBy(plans)}, asked before it), read from `buffers` (the patcher's). */
    public void mirror(Map<String, int[]> touched, Map<String, FloatBuffer> buffers) {
        for (Map.Entry<String, int[]> e : touched.entrySet()) write(e.getKey(), e.getValue(), buffers.get(e.getKey()));
    }

    /** Closes the file. The mappings stay until they are garbage-collected (Java has no unmap); nothing is
     *  forced to disk (the page cache writes the pages back). */
    @Override
    public void close() throws IOException {
        closed = true;
        copies.clear();
        channel.close();
    }

    // ---- a NumPy .npy position map: version 1.0, little-endian uint32 or int64, C order, one dimension -------
    private static final class Npy {
        private static final Pattern DESCR = Pattern.compile("'descr':\\s*'([^']*)'");
        private static final Pattern ORDER = Pattern.compile("'fortran_order':\\s*(True|False)");
        private static final Pattern SHAPE = Pattern.compile("'shape':\\s*\\((\\d+),?\\)");
        final ByteBuffer data;
        final boolean wide; // int64, else uint32
        final long size;

        private Npy(ByteBuffer data, boolean wide, long size) { this.data = data; this.wide = wide; this.size = size; }

        static Npy open(File f) throws IOException {
            try (FileChannel ch = FileChannel.open(f.toPath(), StandardOpenOption.READ)) {
                ByteBuffer head = ByteBuffer.allocate(10).order(ByteOrder.LITTLE_ENDIAN);
                while (head.hasRemaining() && ch.read(head) >= 0) { /* fill */ }
                byte[] magic = {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
                for (int i = 0; i < magic.length; i++)
                    if (head.position() < 10 || head.get(i) != magic[i])
                        throw new IOException(f + ": not a version 1.0 .npy file");
                int n = head.getShort(8) & 0xFFFF;
                ByteBuffer text = ByteBuffer.allocate(n);
                while (text.hasRemaining() && ch.read(text) >= 0) { /* fill */ }
                String h = new String(text.array(), 0, text.position(), StandardCharsets.US_ASCII);
                Matcher d = DESCR.matcher(h), o = ORDER.matcher(h), s = SHAPE.matcher(h);
                if (!d.find() || !o.find() || !s.find() || !(d.group(1).equals("<u4") || d.group(1).equals("<i8"))
                        || o.group(1).equals("True"))
                    throw new IOException(f + ": a position map must be a one-dimensional, C-order array of "
                            + "little-endian uint32 or int64 (header " + h.trim() + ")");
                boolean wide = d.group(1).equals("<i8");
                long size = Long.parseLong(s.group(1)), bytes = size * (wide ? 8 : 4);
                if (10 + n + bytes > ch.size() || bytes > Integer.MAX_VALUE)
                    throw new IOException(f + ": " + size + " positions do not fit the file (truncated?)");
                ByteBuffer data = ch.map(FileChannel.MapMode.READ_ONLY, 10 + n, bytes).order(ByteOrder.LITTLE_ENDIAN);
                return new Npy(data, wide, size);
            }
        }

        long get(int f) { return wide ? data.getLong(8 * f) : data.getInt(4 * f) & 0xFFFFFFFFL; }
    }

    // ---- JSON helpers ---------------------------------------------------------------------------------------
    private static Map<?, ?> obj(Object o, File json, String what) throws IOException {
        if (!(o instanceof Map)) throw new IOException(json + ": " + what + " must be a JSON object");
        return (Map<?, ?>) o;
    }

    private static List<?> copyList(Map.Entry<?, ?> placement, File json) throws IOException {
        Object cs = obj(placement.getValue(), json, "placement " + placement.getKey()).get("copies");
        if (!(cs instanceof List) || ((List<?>) cs).isEmpty())
            throw new IOException(json + ": placement " + placement.getKey() + " has no copies");
        return (List<?>) cs;
    }

    private static void need(Map<?, ?> form, File json, String where, String... keys) throws IOException {
        for (String k : keys)
            if (!(form.get(k) instanceof Long) || (Long) form.get(k) < 1)
                throw new IOException(json + ": " + where + ": " + form.get("form") + " needs a positive integer " + k);
    }

    private static long num(Map<?, ?> form, String key) { return (Long) form.get(key); }
}
