package bench

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/goregular"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"
)

// The plot is two bar charts, one above the other: throughput per
// workload and engine, and latency percentiles (p50, p95, p99 as nested
// bars) per workload and engine, both on log scales so that Redis and
// PostgreSQL fit on one axis. It is laid out once on an abstract canvas
// and drawn as SVG (by hand) or PNG (image/png with the Go fonts).

// WritePlot draws the report to path; the format follows the extension
// (.png or .svg).
func WritePlot(path string, r Report) error {
	var buf bytes.Buffer
	switch strings.ToLower(filepath.Ext(path)) {
	case ".svg":
		c := newSVGCanvas(plotW, plotH)
		drawReport(c, r)
		buf.WriteString(c.String())
	case ".png":
		c, err := newPNGCanvas(plotW, plotH)
		if err != nil {
			return err
		}
		drawReport(c, r)
		if err := png.Encode(&buf, c.img); err != nil {
			return err
		}
	default:
		return fmt.Errorf("bench: plot %s: want a .png or .svg file name", path)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

const (
	plotW = 1100
	plotH = 850
)

type anchor int

const (
	anchorStart anchor = iota
	anchorMiddle
	anchorEnd
)

type canvas interface {
	rect(x, y, w, h float64, fill color.RGBA)
	text(x, y float64, s string, size float64, c color.RGBA, a anchor)
}

var (
	colWhite = color.RGBA{255, 255, 255, 255}
	colText  = color.RGBA{33, 33, 33, 255}
	colMuted = color.RGBA{110, 110, 110, 255}
	colGrid  = color.RGBA{225, 225, 225, 255}
	colAxis  = color.RGBA{90, 90, 90, 255}
	// One hue per engine; latency bars use three shades of it.
	engineColors = map[string][3]color.RGBA{
		EngineOurs:         {{31, 95, 170, 255}, {92, 148, 214, 255}, {170, 200, 235, 255}},
		EngineCTE:          {{110, 70, 160, 255}, {160, 125, 200, 255}, {210, 190, 230, 255}},
		EngineCached:       {{20, 140, 140, 255}, {90, 190, 190, 255}, {175, 225, 225, 255}},
		EnginePgbench:      {{60, 140, 70, 255}, {115, 185, 120, 255}, {185, 225, 185, 255}},
		EnginePgbenchCTE:   {{100, 120, 40, 255}, {150, 170, 90, 255}, {205, 215, 165, 255}},
		EngineRedis:        {{190, 60, 50, 255}, {225, 120, 110, 255}, {242, 190, 185, 255}},
		EngineRedisDurable: {{200, 120, 30, 255}, {230, 165, 90, 255}, {245, 210, 170, 255}},
		EngineFloor:        {{90, 90, 90, 255}, {150, 150, 150, 255}, {205, 205, 205, 255}},
		EngineSingleFlight: {{200, 60, 140, 255}, {225, 125, 185, 255}, {240, 195, 222, 255}},
		EngineUnbatched:    {{60, 60, 130, 255}, {115, 115, 180, 255}, {185, 185, 220, 255}},
		EngineIdle:         {{160, 110, 20, 255}, {205, 160, 80, 255}, {235, 205, 150, 255}},
		EngineCachedIdle:   {{120, 90, 50, 255}, {170, 140, 100, 255}, {215, 195, 165, 255}},
	}
)

func engineColor(engine string, shade int) color.RGBA {
	if c, ok := engineColors[engine]; ok {
		return c[shade]
	}
	return colMuted
}

// logAxis maps values onto [y0 (bottom), y1 (top)] on a log10 scale over
// whole decades covering lo..hi.
type logAxis struct {
	dlo, dhi float64 // decades (exponents)
	y0, y1   float64
}

func newLogAxis(lo, hi, y0, y1 float64) logAxis {
	if lo <= 0 || hi <= 0 || math.IsInf(lo, 0) {
		lo, hi = 1, 10
	}
	a := logAxis{dlo: math.Floor(math.Log10(lo)), dhi: math.Ceil(math.Log10(hi)), y0: y0, y1: y1}
	if a.dhi <= a.dlo {
		a.dhi = a.dlo + 1
	}
	return a
}

func (a logAxis) y(v float64) float64 {
	if v <= 0 {
		return a.y0
	}
	f := (math.Log10(v) - a.dlo) / (a.dhi - a.dlo)
	f = max(0, min(1, f))
	return a.y0 - f*(a.y0-a.y1)
}

// compact prints 1234 as "1.2k", 0.5 as "0.5".
func compact(v float64) string {
	switch {
	case v >= 1e6:
		return trimZero(fmt.Sprintf("%.1f", v/1e6)) + "M"
	case v >= 1e3:
		return trimZero(fmt.Sprintf("%.1f", v/1e3)) + "k"
	case v >= 10:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return trimZero(fmt.Sprintf("%.1f", v))
	case v >= 0.01:
		return trimZero(fmt.Sprintf("%.2f", v))
	default:
		return trimZero(fmt.Sprintf("%.3f", v))
	}
}

func trimZero(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

type panel struct {
	title   string
	unit    string
	top     float64
	height  float64
	engines []string
	groups  []string
	// values[g][e] holds up to three values drawn as nested bars (the
	// largest, lightest, behind); nil when the engine did not run.
	values [][][]float64
	labels [][]string
}

func drawReport(c canvas, r Report) {
	c.rect(0, 0, plotW, plotH, colWhite)
	c.text(plotW/2, 30, "agentsessions bench · "+r.Started.Format("2006-01-02")+" · "+
		fmt.Sprintf("%d clients (%d instances x %d workers)", r.Settings.Clients, r.Settings.Instances, r.Settings.Workers),
		18, colText, anchorMiddle)
	h := r.Host
	sub := fmt.Sprintf("%s/%s, %d CPUs %s · PostgreSQL %s", h.OS, h.Arch, h.CPUs, h.CPUModel, h.Postgres)
	if h.Redis != "" {
		sub += " · " + h.Redis
	}
	c.text(plotW/2, 52, sub, 12, colMuted, anchorMiddle)

	var engines []string
	seen := map[string]bool{}
	for _, wl := range r.Workloads {
		for _, res := range wl.Results {
			if !seen[res.Engine] {
				seen[res.Engine] = true
				engines = append(engines, res.Engine)
			}
		}
	}
	tp := panel{title: "Throughput (operations per second, log scale; label: ops/s and ratio to pgbench)", unit: "/s", top: 80, height: 330, engines: engines}
	lat := panel{title: "Latency (ms, log scale; nested bars: p50 dark, p95, p99 light; label: p99)", unit: "ms", top: 450, height: 330, engines: engines}
	narrow := len(engines) > 4 // labels without the ratio, which would overlap
	if narrow {
		tp.title = "Throughput (operations per second, log scale; label: ops/s; ratios in the table)"
	}
	for _, wl := range r.Workloads {
		tp.groups = append(tp.groups, wl.Name)
		lat.groups = append(lat.groups, wl.Name)
		tv := make([][]float64, len(engines))
		tl := make([]string, len(engines))
		lv := make([][]float64, len(engines))
		ll := make([]string, len(engines))
		for _, res := range wl.Results {
			i := indexOf(engines, res.Engine)
			tv[i] = []float64{res.OpsPerSec}
			tl[i] = compact(res.OpsPerSec)
			if res.Ratio > 0 && !narrow {
				tl[i] += fmt.Sprintf(" (%.2fx)", res.Ratio)
			}
			lv[i] = []float64{ms(res.Latency.P99), ms(res.Latency.P95), ms(res.Latency.P50)}
			ll[i] = compact(ms(res.Latency.P99))
		}
		tp.values, tp.labels = append(tp.values, tv), append(tp.labels, tl)
		lat.values, lat.labels = append(lat.values, lv), append(lat.labels, ll)
	}
	drawPanel(c, tp)
	drawPanel(c, lat)

	// Legend, wrapped onto a second row when it does not fit.
	x, y := 90.0, float64(plotH-50)
	for _, e := range engines {
		w := 40 + 7.5*float64(len(e))
		if x+w > plotW-20 {
			x, y = 90, y+22
		}
		c.rect(x, y, 14, 14, engineColor(e, 0))
		c.text(x+20, y+12, e, 13, colText, anchorStart)
		x += w
	}
}

func indexOf(xs []string, s string) int {
	for i, x := range xs {
		if x == s {
			return i
		}
	}
	return -1
}

const (
	plotLabelSize = 10
	plotLabelRow  = 12 // px between staggered label rows
)

// labelWidth estimates a label's width in px: Go Regular's digits and
// most letters are about 0.56 em wide.
func labelWidth(s string, size float64) float64 { return 0.56 * size * float64(len([]rune(s))) }

// labelBox is where a bar label is drawn: centred on x, baseline y.
type labelBox struct{ x, w, y float64 }

func (b labelBox) overlapsAny(others []labelBox) bool {
	for _, o := range others {
		if math.Abs(b.x-o.x) < (b.w+o.w)/2+2 && math.Abs(b.y-o.y) < plotLabelRow {
			return true
		}
	}
	return false
}

// tickLabel prints an axis value with its unit: milliseconds of a
// thousand and more as seconds ("1s", not "1kms").
func tickLabel(v float64, unit string) string {
	if unit == "ms" && v >= 1000 {
		return compact(v/1000) + "s"
	}
	return compact(v) + unit
}

func drawPanel(c canvas, p panel) {
	left, right := 90.0, float64(plotW-30)
	top, bottom := p.top+30, p.top+p.height-30
	c.text(left, p.top+14, p.title, 14, colText, anchorStart)
	lo, hi := math.Inf(1), 0.0
	for _, g := range p.values {
		for _, vs := range g {
			for _, v := range vs {
				if v > 0 {
					lo, hi = min(lo, v), max(hi, v)
				}
			}
		}
	}
	gw := (right - left) / float64(max(1, len(p.groups)))
	bw := min(70, (gw-30)/float64(max(1, len(p.engines))))
	// Labels wider than their bar are staggered over as many rows as it
	// takes for neighbours in the same row to clear each other.
	rows := 1
	for _, g := range p.labels {
		for _, l := range g {
			rows = max(rows, int(math.Ceil((labelWidth(l, plotLabelSize)+4)/bw)))
		}
	}
	rows = min(rows, 6)
	ax := newLogAxis(lo, hi*1.5, bottom, top+4+plotLabelRow*float64(rows))
	for d := ax.dlo; d <= ax.dhi; d++ {
		y := ax.y(math.Pow(10, d))
		c.rect(left, y, right-left, 1, colGrid)
		c.text(left-8, y+4, tickLabel(math.Pow(10, d), p.unit), 11, colMuted, anchorEnd)
	}
	c.rect(left, top, 1, bottom-top, colAxis)
	c.rect(left, bottom, right-left, 1, colAxis)
	if len(p.groups) == 0 {
		return
	}
	var placed []labelBox
	for gi, g := range p.groups {
		gx := left + gw*float64(gi) + (gw-bw*float64(len(p.engines)))/2
		c.text(left+gw*(float64(gi)+0.5), bottom+18, g, 13, colText, anchorMiddle)
		for ei, e := range p.engines {
			vs := p.values[gi][ei]
			if vs == nil {
				continue
			}
			x := gx + bw*float64(ei)
			// vs[0] is the largest: lightest shade, drawn first (behind).
			for i, v := range vs {
				y := ax.y(v)
				c.rect(x+2, y, bw-4, bottom-y, engineColor(e, len(vs)-1-i))
			}
			// Just above the bar, or as many rows higher as it takes to
			// clear every label placed before it.
			l := p.labels[gi][ei]
			b := labelBox{x: x + bw/2, w: labelWidth(l, plotLabelSize), y: ax.y(vs[0]) - 5}
			for b.overlapsAny(placed) {
				b.y -= plotLabelRow
			}
			placed = append(placed, b)
			c.text(b.x, b.y, l, plotLabelSize, colText, anchorMiddle)
		}
	}
}

// svgCanvas writes SVG elements.
type svgCanvas struct{ b strings.Builder }

func newSVGCanvas(w, h int) *svgCanvas {
	c := &svgCanvas{}
	fmt.Fprintf(&c.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Go, Helvetica, Arial, sans-serif">`+"\n", w, h, w, h)
	return c
}

func hexColor(c color.RGBA) string { return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B) }

func (c *svgCanvas) rect(x, y, w, h float64, fill color.RGBA) {
	fmt.Fprintf(&c.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x, y, w, h, hexColor(fill))
}

func (c *svgCanvas) text(x, y float64, s string, size float64, col color.RGBA, a anchor) {
	anchors := [...]string{"start", "middle", "end"}
	var esc strings.Builder
	for _, r := range s {
		switch r {
		case '<':
			esc.WriteString("&lt;")
		case '>':
			esc.WriteString("&gt;")
		case '&':
			esc.WriteString("&amp;")
		default:
			esc.WriteRune(r)
		}
	}
	fmt.Fprintf(&c.b, `<text x="%.1f" y="%.1f" font-size="%.0f" fill="%s" text-anchor="%s">%s</text>`+"\n",
		x, y, size, hexColor(col), anchors[a], esc.String())
}

func (c *svgCanvas) String() string { return c.b.String() + "</svg>\n" }

// pngCanvas draws on an RGBA image with the Go Regular font.
type pngCanvas struct {
	img   *image.RGBA
	font  *opentype.Font
	faces map[float64]font.Face
}

func newPNGCanvas(w, h int) (*pngCanvas, error) {
	f, err := opentype.Parse(goregular.TTF)
	if err != nil {
		return nil, err
	}
	return &pngCanvas{img: image.NewRGBA(image.Rect(0, 0, w, h)), font: f, faces: map[float64]font.Face{}}, nil
}

func (c *pngCanvas) rect(x, y, w, h float64, fill color.RGBA) {
	r := image.Rect(int(math.Round(x)), int(math.Round(y)), int(math.Round(x+w)), int(math.Round(y+h)))
	draw.Draw(c.img, r, image.NewUniform(fill), image.Point{}, draw.Over)
}

func (c *pngCanvas) face(size float64) font.Face {
	if f, ok := c.faces[size]; ok {
		return f
	}
	f, err := opentype.NewFace(c.font, &opentype.FaceOptions{Size: size, DPI: 72, Hinting: font.HintingFull})
	if err != nil {
		panic(err) // only for an invalid size, which this file never asks for
	}
	c.faces[size] = f
	return f
}

func (c *pngCanvas) text(x, y float64, s string, size float64, col color.RGBA, a anchor) {
	d := &font.Drawer{Dst: c.img, Src: image.NewUniform(col), Face: c.face(size)}
	w := float64(d.MeasureString(s)) / 64
	switch a {
	case anchorMiddle:
		x -= w / 2
	case anchorEnd:
		x -= w
	}
	d.Dot = fixed.P(int(math.Round(x)), int(math.Round(y)))
	d.DrawString(s)
}
