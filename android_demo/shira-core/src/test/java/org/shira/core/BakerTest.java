package org.shira.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.Test;

/** The bake's pure-Java parts without ONNX Runtime: the position forms found back from the positions they give,
 *  the protobuf reader on a hand-written model, and refusals that come before any ORT call. The bake itself is
 *  compared with the Python runtime's, on real ORT bakes, by tests/test_java_bake.py. */
public class BakerTest {
    private static int[] positions(int n, java.util.function.IntUnaryOperator at) {
        int[] p = new int[n];
        for (int f = 0; f < n; f++) p[f] = at.applyAsInt(f);
        return p;
    }

    @Test
    public void describeFindsEachFormBackAndNothingElse() {
        assertEquals("contiguous", PositionForms.describe(positions(100, f -> f), new long[] {10, 10}));
        int[] perm = {4, 0, 2, 7, 1, 5, 3, 6}; // no shorter period: 0..3 are not its first four
        Map<?, ?> tiles = (Map<?, ?>) PositionForms.describe(positions(64, f -> f / 8 * 8 + perm[f % 8]), new long[] {64});
        assertEquals("tiles", tiles.get("form"));
        assertEquals(8L, tiles.get("period"));
        assertEquals(Arrays.asList(4L, 0L, 2L, 7L, 1L, 5L, 3L, 6L), tiles.get("perm"));
        // MLAS panels of B [K=300, N=20]: blocks of 256 rows, panels of 16 columns padded to 32
        int kTotal = 300, cols = 20;
        Map<?, ?> panels = (Map<?, ?>) PositionForms.describe(positions(kTotal * cols, f -> {
            int k = f / cols, n = f % cols, kb = k / 256, rows = Math.min(kTotal - kb * 256, 256);
            return kb * 256 * 32 + (n / 16) * rows * 16 + (k % 256) * 16 + n % 16;
        }), new long[] {kTotal, cols});
        assertEquals("panels", panels.get("form"));
        assertEquals(Arrays.asList(300L, 20L, 256L, 16L, 32L), Arrays.asList(panels.get("rows"), panels.get("cols"),
                panels.get("k_block"), panels.get("panel"), panels.get("aligned_n")));
        // row groups of 4 (the last one partial), chunks of 16 with a permutation inside
        int nTotal = 10, k = 32;
        int[] chunkPerm = new int[16];
        for (int i = 0; i < 16; i++) chunkPerm[i] = (i * 5) % 16;
        Map<?, ?> groups = (Map<?, ?>) PositionForms.describe(positions(nTotal * k, f -> {
            int n = f / k, kk = f % k, g = n / 4, in = Math.min(4, nTotal - g * 4);
            return g * 4 * k + (kk / 16) * in * 16 + (n % 4) * 16 + chunkPerm[kk % 16];
        }), new long[] {nTotal, k});
        assertEquals("row_groups", groups.get("form"));
        assertEquals(4L, groups.get("group"));
        assertEquals(16L, groups.get("chunk"));
        int[] shuffled = positions(90, f -> f);
        Random rng = new Random(0);
        for (int i = shuffled.length - 1; i > 0; i--) {
            int j = rng.nextInt(i + 1), t = shuffled[i];
            shuffled[i] = shuffled[j];
            shuffled[j] = t;
        }
        assertNull(PositionForms.describe(shuffled, new long[] {9, 10}));
    }

    private static byte[] field(int number, byte[] value) {
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        b.write(number << 3 | 2);
        b.write(value.length); // below 128 here: one varint byte
        b.write(value, 0, value.length);
        return b.toByteArray();
    }

    private static byte[] str(int number, String s) { return field(number, s.getBytes(StandardCharsets.UTF_8)); }

    private static byte[] cat(byte[]... parts) {
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        for (byte[] p : parts) b.write(p, 0, p.length);
        return b.toByteArray();
    }

    private static byte[] entry(String key, String value) { return field(13, cat(str(1, key), str(2, value))); }

    @Test
    public void onnxRegionsReadsDataAndPrepackedRegionsAndUses() throws IOException {
        byte[] tensor = cat(str(8, "w"), entry("location", "baked.bin"), entry("offset", "0"), entry("length", "64"),
                entry("prepacked_0", "kernel|64;128;0|192;32;1"));
        byte[] graph = cat(field(1, str(1, "w")), field(1, cat(str(1, "x"), str(1, "w"))), field(5, tensor),
                field(5, str(8, "inline")));
        byte[] model = cat(new byte[] {8, 9}, field(7, graph)); // ir_version = 9, then the graph
        OnnxRegions r = OnnxRegions.read(model, "m.onnx");
        List<OnnxRegions.Region> want = Arrays.asList(new OnnxRegions.Region("w", "data", 0, 64),
                new OnnxRegions.Region("w", "prepacked", 64, 128), new OnnxRegions.Region("w", "prepacked", 192, 32));
        assertEquals(want, r.regions);
        assertEquals(Integer.valueOf(2), r.uses.get("w"));
        assertEquals(Arrays.asList("baked.bin"), r.locations);
        try {
            OnnxRegions.read(Arrays.copyOf(model, model.length - 3), "m.onnx");
            fail("a truncated model was read");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("m.onnx: not a readable ONNX model"));
        }
    }

    @Test
    public void aQuantizedManifestIsRefusedBeforeOnnxRuntimeIsAsked() throws Exception {
        String manifest = "{\"format\": \"shira-manifest\", \"format_version\": 3, \"tensors\": {\"w\": {\"shape\": [4, 4],"
                + " \"placements\": {\"onnxruntime\": [{\"name\": \"w\", \"quant\": {\"bits\": 4}}]}}}}";
        File out = new File(System.getProperty("java.io.tmpdir"), "shira-baker-test-" + System.nanoTime());
        try {
            Baker.bake(new File("."), manifest, out, (s, o) -> fail("ORT was asked"), "test", m -> { });
            fail("a quantized placement was baked");
        } catch (UnsupportedOperationException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("quantized placements are not baked from Java yet"));
        }
        assertTrue(!out.exists());
    }
}
