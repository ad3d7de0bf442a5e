package org.shira.demo;

import android.app.Activity;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.view.View;
import android.view.ViewGroup;
import android.widget.Button;
import android.widget.ImageView;
import android.widget.LinearLayout;
import android.widget.RadioButton;
import android.widget.RadioGroup;
import android.widget.ScrollView;
import android.widget.SeekBar;
import android.widget.TextView;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.Executor;
import org.shira.core.Baker;
import org.shira.core.PatchableBase;
import org.shira.core.Photos;
import org.shira.core.StyleEngine;
import org.shira.core.StyleSwitcher;
import org.shira.core.WeightPatcher;

/** Swaps image styles by patching sparse adapters into the weights of a style net loaded ONCE, on ONNX Runtime
 *  or ExecuTorch (a choice on screen, as in the web demo). All loading, patching and inference run on the
 *  StyleSwitcher's worker thread; this class only builds the screen and shows what the worker reports. */
public class MainActivity extends Activity implements StyleSwitcher.Listener {
    static final int SIZE = 256; // the net's input side; the photo is cropped to a centred square and resized
    static final int THREADS = 2;

    private final Executor ui = new Executor() {
        private final Handler main = new Handler(Looper.getMainLooper());
        @Override public void execute(Runnable r) { main.post(r); }
    };
    private StyleSwitcher switcher;
    private String runtime = PatchableBase.ONNXRUNTIME;
    private Map<String, Double> current = new LinkedHashMap<>(); // what the user asked for last
    private String rule = "sum"; // how the slider's two styles combine where both touch a weight
    private ImageView output;
    private TextView status;
    private TextView times;
    private LinearLayout styleButtons;
    private SeekBar mix;
    private List<String> styles = new ArrayList<>();

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        // targetSdk 35 draws edge to edge: keep the content clear of the status and navigation bars
        root.setOnApplyWindowInsetsListener((v, insets) -> {
            v.setPadding(insets.getSystemWindowInsetLeft(), insets.getSystemWindowInsetTop(),
                    insets.getSystemWindowInsetRight(), insets.getSystemWindowInsetBottom());
            return insets;
        });
        RadioGroup engines = new RadioGroup(this);
        engines.setOrientation(RadioGroup.HORIZONTAL);
        engines.addView(radio(1, "ONNX Runtime"));
        engines.addView(radio(2, "ExecuTorch (XNNPACK)"));
        engines.check(1);
        engines.setOnCheckedChangeListener((g, id) -> open(id == 2 ? PatchableBase.EXECUTORCH : PatchableBase.ONNXRUNTIME));
        root.addView(engines);
        output = new ImageView(this);
        output.setAdjustViewBounds(true);
        output.setScaleType(ImageView.ScaleType.FIT_CENTER);
        root.addView(output, new LinearLayout.LayoutParams(ViewGroup.LayoutParams.MATCH_PARENT, ViewGroup.LayoutParams.WRAP_CONTENT));
        status = new TextView(this);
        times = new TextView(this);
        root.addView(status);
        root.addView(times);
        styleButtons = new LinearLayout(this);
        styleButtons.setOrientation(LinearLayout.VERTICAL);
        root.addView(styleButtons);
        mix = new SeekBar(this);
        mix.setMax(100);
        mix.setVisibility(View.GONE);
        mix.setOnSeekBarChangeListener(new SeekBar.OnSeekBarChangeListener() {
            @Override public void onProgressChanged(SeekBar sb, int p, boolean user) {
                if (!user || styles.size() < 2) return;
                Map<String, Double> m = new LinkedHashMap<>();
                m.put(styles.get(0), 1 - p / 100.0);
                m.put(styles.get(1), p / 100.0);
                request(m); // returns at once; ticks that arrive during a switch collapse into the latest
            }
            @Override public void onStartTrackingTouch(SeekBar sb) {}
            @Override public void onStopTrackingTouch(SeekBar sb) {}
        });
        root.addView(mix);
        RadioGroup rules = new RadioGroup(this); // docs/FORMAT.md §6.1: the merge rules, as in the runtime
        rules.setOrientation(RadioGroup.HORIZONTAL);
        for (int i = 0; i < WeightPatcher.RULES.size(); i++) rules.addView(radio(10 + i, WeightPatcher.RULES.get(i)));
        rules.check(10);
        rules.setOnCheckedChangeListener((g, id) -> {
            rule = WeightPatcher.RULES.get(id - 10);
            request(current);
        });
        root.addView(rules);
        ScrollView scroll = new ScrollView(this);
        scroll.addView(root);
        setContentView(scroll);
        open(runtime);
    }

    private RadioButton radio(int id, String label) {
        RadioButton b = new RadioButton(this);
        b.setId(id);
        b.setText(label);
        return b;
    }

    /** Close the current engine (on its worker, after the run in progress) and load `rt` on a new one. */
    private void open(String rt) {
        if (switcher != null) switcher.close();
        runtime = rt;
        styleButtons.removeAllViews();
        mix.setVisibility(View.GONE);
        status.setText(String.format(Locale.US, "loading the style net on %s ...", rt));
        times.setText("");
        switcher = new StyleSwitcher(ui, this);
        switcher.start(() -> load(rt));
        switcher.request(current, rule); // applied once loaded: the new engine shows the same style
    }

    private void request(Map<String, Double> scales) {
        current = scales;
        switcher.request(scales, rule);
    }

    /** Runs on the worker thread. */
    private StyleSwitcher.Loaded load(String rt) throws Exception {
        String manifest = new String(asset("base/manifest.json"), StandardCharsets.UTF_8);
        PatchableBase base;
        File program = null;
        if (rt.equals(PatchableBase.ONNXRUNTIME)) {
            byte[] file = asset("base/weights.safetensors");
            ByteBuffer weights = ByteBuffer.allocateDirect(file.length).order(ByteOrder.LITTLE_ENDIAN);
            weights.put(file);
            base = PatchableBase.open(manifest, "base/manifest.json", rt, weights, "base/weights.safetensors");
        } else {
            // a fresh private copy at every start: patches of an earlier run (or one killed mid-write) never leak
            program = copyAsset("base/model.pte", new File(getFilesDir(), "model.pte"));
            MappedByteBuffer bytes;
            try (RandomAccessFile f = new RandomAccessFile(program, "rw"); FileChannel ch = f.getChannel()) {
                bytes = ch.map(FileChannel.MapMode.READ_WRITE, 0, ch.size()); // stays valid after the close
            }
            base = PatchableBase.open(manifest, "base/manifest.json", rt, bytes, "base/model.pte");
        }
        List<String> names = new ArrayList<>();
        String[] files = getAssets().list("styles");
        for (String f : files == null ? new String[0] : files) {
            if (!f.endsWith(".shira")) continue;
            String name = f.substring(0, f.length() - ".shira".length());
            base.loadAdapter(name, asset("styles/" + f), "styles/" + f); // validated in full before use
            names.add(name);
        }
        if (names.isEmpty()) throw new java.io.FileNotFoundException("styles/*.shira");
        StyleEngine engine = program == null ? ortEngine(manifest, base, names.get(0))
                : new ExecuTorchStyleEngine(program, base, SIZE, THREADS);
        try {
            return new StyleSwitcher.Loaded(base.patcher, engine, photo(), SIZE, names);
        } catch (Exception | Error e) {
            engine.close();
            throw e;
        }
    }

    /** ONNX Runtime in place where this phone's bake allows it (baked once, on first start, with its steps on
     *  screen, then proven against the patchable engine with a real style), else the patchable engine, and the
     *  screen says why (docs/INPLACE.md). Runs on the worker thread. */
    private StyleEngine ortEngine(String manifest, PatchableBase base, String style) throws Exception {
        String why;
        try {
            File export = new File(getFilesDir(), "export");
            if (base.prepackedProgram == null) throw new Baker.CannotBakeException("the export has no model_prepacked.onnx");
            for (String f : new String[]{"manifest.json", base.prepackedProgram, base.weightsFile})
                if (!new File(export, f).exists() || new File(export, f).length() != assetLength("base/" + f)) {
                    if (!export.isDirectory() && !export.mkdirs()) throw new IOException(export + ": cannot create it");
                    copyAsset("base/" + f, new File(export, f));
                }
            boolean[] fresh = {false};
            File bake = OnDeviceBake.acquire(export, manifest, new File(getCacheDir(), "shira-bake"),
                    step -> ui.execute(() -> status.setText("baking ONNX Runtime's weights for this phone, once: " + step)),
                    fresh);
            InPlaceOrtStyleEngine engine = new InPlaceOrtStyleEngine(bake, new File(getFilesDir(), "inplace"), base,
                    base.inputs.get(0), SIZE, THREADS);
            why = fresh[0] ? prove(engine, base, style) : null;
            if (why == null) return engine;
            engine.close();
            OnDeviceBake.deleteTree(bake);
            OnDeviceBake.remember(new File(bake.getPath() + ".unbakeable"), why);
        } catch (Baker.CannotBakeException | UnsupportedOperationException e) { // UnsupportedOperation: quantized
            why = e.getMessage();
        } catch (IOException e) { // a full or read-only disk: nothing recorded, the next start tries again
            why = "the bake could not be written: " + e.getMessage();
        }
        return new OrtStyleEngine(asset("base/" + base.program), base, base.inputs.get(0), SIZE, THREADS, why);
    }

    /** A fresh bake must compute what the patchable engine computes with `style` patched in (1e-4 of the output's
     *  scale, as inplace/bake.py's proof): null if it does, else why not. Leaves the weights at the base. */
    private String prove(StyleEngine inPlace, PatchableBase base, String style) throws Exception {
        try (OrtStyleEngine reference = new OrtStyleEngine(asset("base/" + base.program), base, base.inputs.get(0),
                SIZE, THREADS, null)) {
            float[] x = photo();
            inPlace.run(x, SIZE); // a kernel may pack its weight at the first run: the proof runs after one
            apply(base, inPlace, java.util.Collections.singletonMap(style, 1.0));
            float[] got = inPlace.run(x, SIZE), want = reference.run(x, SIZE);
            apply(base, inPlace, new LinkedHashMap<>());
            double err = 0, scale = 1e-12;
            for (int i = 0; i < want.length; i++) {
                err = Math.max(err, Math.abs(got[i] - want[i]));
                scale = Math.max(scale, Math.abs(want[i]));
            }
            return err <= 1e-4 * scale ? null : String.format(Locale.US,
                    "a patch written into the baked weights does not reach ONNX Runtime (%.2g of the output's scale)", err / scale);
        }
    }

    private static void apply(PatchableBase base, StyleEngine engine, Map<String, Double> scales) throws Exception {
        Map<String, WeightPatcher.Plan> plans = base.patcher.plan(scales);
        java.util.Set<String> changed = base.patcher.changedBy(plans);
        Map<String, int[]> touched = base.patcher.touchedBy(plans);
        base.patcher.commit(plans);
        engine.weightsChanged(changed, touched);
    }

    private float[] photo() throws IOException {
        byte[] png = asset("photo.png");
        Bitmap bmp = BitmapFactory.decodeByteArray(png, 0, png.length);
        if (bmp == null) throw new IOException("photo.png is not an image Android can decode");
        int w = bmp.getWidth(), h = bmp.getHeight();
        int[] px = new int[w * h];
        bmp.getPixels(px, 0, w, 0, 0, w, h);
        bmp.recycle();
        return Photos.squareChw(px, w, h, SIZE); // any aspect ratio: the centred square
    }

    private long assetLength(String name) throws IOException {
        try (InputStream in = getAssets().open(name)) {
            long n = 0;
            byte[] buf = new byte[1 << 16];
            for (int r; (r = in.read(buf)) > 0; ) n += r;
            return n;
        }
    }

    private byte[] asset(String name) throws IOException {
        try (InputStream in = getAssets().open(name)) { // FileNotFoundException(name) if not staged
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) out.write(buf, 0, n);
            return out.toByteArray();
        }
    }

    /** Copy an asset to `dest` atomically (temp file + rename). */
    private File copyAsset(String name, File dest) throws IOException {
        File tmp = new File(dest.getPath() + ".tmp");
        try (InputStream in = getAssets().open(name); FileOutputStream out = new FileOutputStream(tmp)) {
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) out.write(buf, 0, n);
            out.getFD().sync();
        }
        if (!tmp.renameTo(dest)) throw new IOException("cannot write " + dest);
        return dest;
    }

    @Override
    public void onReady(String engine, List<String> loaded) {
        styles = loaded;
        status.setText(String.format(Locale.US, "%s: style net loaded once, %d styles", engine, loaded.size()));
        styleButtons.removeAllViews();
        Button base = new Button(this);
        base.setText("base (no style)");
        base.setOnClickListener(v -> request(new LinkedHashMap<>()));
        styleButtons.addView(base);
        for (String s : loaded) {
            Button b = new Button(this);
            b.setText(s);
            b.setOnClickListener(v -> {
                Map<String, Double> m = new LinkedHashMap<>();
                m.put(s, 1.0);
                request(m);
            });
            styleButtons.addView(b);
        }
        if (loaded.size() >= 2) {
            mix.setVisibility(View.VISIBLE);
            TextView label = new TextView(this);
            label.setText(String.format(Locale.US, "slider: fuse %s and %s, combined by the rule below", loaded.get(0), loaded.get(1)));
            styleButtons.addView(label);
        }
    }

    @Override
    public void onResult(StyleSwitcher.Result r) {
        output.setImageBitmap(Bitmap.createBitmap(r.pixels, r.size, r.size, Bitmap.Config.ARGB_8888));
        String what = r.scales.isEmpty() ? "base" : r.scales.size() > 1 ? r.scales + " by " + r.rule : r.scales.toString();
        status.setText(String.format(Locale.US, "%s: %s, %d weights patched", r.engine, what, r.patchedEntries));
        String steady = Double.isNaN(r.steadyMs) ? "measuring..." : String.format(Locale.US, "%.1f ms", r.steadyMs);
        times.setText(String.format(Locale.US, "switch %.2f ms%s\nfirst inference after it %.1f ms\nsteady inference %s",
                r.switchMs, r.reloaded ? " (method reloaded)" : "", r.firstMs, steady));
    }

    @Override
    public void onError(String message) {
        status.setText(message);
    }

    @Override
    protected void onDestroy() {
        if (switcher != null) switcher.close(); // releases the engine on its worker; returns at once
        switcher = null;
        super.onDestroy();
    }
}
