package org.shira.demo;

import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Locale;
import java.util.Map;
import org.shira.core.AdapterFormatException;
import org.shira.core.Baker;

/** The app's bakes (docs/INPLACE.md, "The bake" and "The cache"): ONNX Runtime's packed weights saved once per
 *  phone, in cacheDir/shira-bake/<key>/, key = SHA-256 over the bake format, the ONNX Runtime version, the CPU
 *  (architecture, /proc/cpuinfo's Features line and the AT_HWCAP/AT_HWCAP2 words of /proc/self/auxv: MLAS picks
 *  its kernels, hence its packing, by them) and the export's manifest. Another phone, an ORT upgrade or a new
 *  export gets a new key, hence a new bake. Baker makes each bake in a .bake-* directory and renames it into
 *  place, so a bake killed with the app is never taken for one; the next start removes it and bakes again (one
 *  app process owns the cache). A base that cannot be baked leaves <key>.unbakeable (the reason): the app then
 *  runs the patchable engine and says why, without baking again at every start. A full or read-only disk is
 *  an IOException: nothing is recorded, the next start tries again. */
final class OnDeviceBake {
    /** The ONNX Runtime the app links (android_demo/gradle.properties ortVersion; tests/test_android_demo.py). */
    static final String ORT_VERSION = "1.32.0";

    private OnDeviceBake() {}

    /** The bake directory for this export on this phone; bakes it first if there is none (seconds to minutes:
     *  `progress` hears each step). `fresh[0]` says whether it was baked now (then prove it before use). */
    static File acquire(File exportDir, String manifestText, File root, Baker.Progress progress, boolean[] fresh)
            throws IOException, AdapterFormatException {
        fresh[0] = false;
        if (!root.isDirectory() && !root.mkdirs()) throw new IOException(root + ": cannot create the bake cache");
        String key = key(manifestText);
        File dir = new File(root, key), bad = new File(root, key + ".unbakeable");
        if (bad.exists())
            throw new Baker.CannotBakeException(new String(Files.readAllBytes(bad.toPath()), StandardCharsets.UTF_8).trim());
        if (new File(dir, Baker.MAP_FILE).exists()) return dir;
        File[] stale = root.listFiles((d, name) -> name.startsWith(".bake-"));
        for (File f : stale == null ? new File[0] : stale) deleteTree(f); // bakes killed with the app
        try {
            Baker.bake(exportDir, manifestText, dir, new OrtOptimizer(), ORT_VERSION, progress);
        } catch (Baker.CannotBakeException e) {
            remember(bad, e.getMessage());
            throw e;
        }
        fresh[0] = true;
        return dir;
    }

    /** Record that this base cannot be baked here (atomically; where the cache can be written). */
    static void remember(File bad, String reason) {
        File tmp = new File(bad.getPath() + ".tmp");
        try {
            Files.write(tmp.toPath(), (reason + "\n").getBytes(StandardCharsets.UTF_8));
            if (!tmp.renameTo(bad)) tmp.delete();
        } catch (IOException ignored) {
            tmp.delete(); // not recorded: the next start tries again
        }
    }

    static String key(String manifestText) {
        try {
            MessageDigest h = MessageDigest.getInstance("SHA-256");
            h.update(String.format(Locale.US, "shira-bake %d|ort %s|%s", Baker.FORMAT, ORT_VERSION, cpuIdentity())
                    .getBytes(StandardCharsets.UTF_8));
            h.update(manifestText.getBytes(StandardCharsets.UTF_8));
            StringBuilder s = new StringBuilder();
            for (byte b : h.digest()) s.append(String.format(Locale.US, "%02x", b));
            return s.substring(0, 20);
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e); // every Java has SHA-256
        }
    }

    /** What MLAS chooses its kernels by: the architecture, the Features line, the auxiliary vector's HWCAPs. */
    static String cpuIdentity() {
        StringBuilder s = new StringBuilder(System.getProperty("os.arch", "?"));
        try {
            for (String line : new String(Files.readAllBytes(new File("/proc/cpuinfo").toPath()), StandardCharsets.UTF_8).split("\n"))
                if (line.startsWith("Features") || line.startsWith("flags")) { s.append('|').append(line.trim()); break; }
        } catch (IOException ignored) { /* not every system shows it */ }
        try (InputStream in = new FileInputStream("/proc/self/auxv")) {
            byte[] raw = new byte[4096];
            int n = 0;
            for (int r; n < raw.length && (r = in.read(raw, n, raw.length - n)) > 0; ) n += r;
            ByteBuffer b = ByteBuffer.wrap(raw, 0, n - n % 16).order(ByteOrder.LITTLE_ENDIAN);
            long cap = 0, cap2 = 0;
            while (b.remaining() >= 16) {
                long type = b.getLong(), value = b.getLong();
                if (type == 16) cap = value;
                if (type == 26) cap2 = value;
            }
            s.append(String.format(Locale.US, "|hwcap %x %x", cap, cap2));
        } catch (IOException ignored) { /* no auxv: the Features line stands alone */ }
        return s.toString();
    }

    static void deleteTree(File f) {
        File[] in = f.listFiles();
        if (in != null) for (File c : in) deleteTree(c);
        f.delete();
    }

    /** Baker's one need from ONNX Runtime: optimize a model (ALL) and save it with its packed weights. */
    static final class OrtOptimizer implements Baker.Optimizer {
        private final OrtEnvironment env = OrtEnvironment.getEnvironment();

        @Override
        public void bake(File source, File outDir) throws IOException {
            try (OrtSession.SessionOptions o = new OrtSession.SessionOptions()) {
                o.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT);
                o.setOptimizedModelFilePath(new File(outDir, Baker.BAKED_MODEL).getPath());
                for (Map.Entry<String, String> e : Baker.OPTIMIZER_CONFIG.entrySet())
                    o.addConfigEntry(e.getKey(), e.getValue());
                env.createSession(source.getPath(), o).close();
            } catch (OrtException e) {
                throw new IOException("ONNX Runtime cannot bake " + source.getName() + ": " + e.getMessage(), e);
            }
        }
    }
}
