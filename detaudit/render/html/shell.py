"""The page shell: the inline CSS, the table-sorting JavaScript and the document around a page's body.

Everything a page needs is inside it, so a page opens offline, from a CI artifact, with nothing fetched.
"""

from __future__ import annotations

from collections.abc import Iterable

from detaudit.render.html.parts import _e

_STYLE = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;padding:1.5em 2em;color:#222;
max-width:1600px}
h1{font-size:1.45em;margin:0 0 .3em}
h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd;padding-bottom:2px}
h3{font-size:1em;margin:1.2em 0 .3em}
nav{font-size:13px;color:#555;margin:.3em 0 1em}nav a{margin-right:1em;color:#1565c0}
a{color:#1565c0}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}
td,th{border:1px solid #d6d6d6;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.wrap{overflow-x:auto;max-width:100%}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:1px 1em;margin:.4em 0 .8em;font-size:13px}
dl.facts dt{color:#666}dl.facts dd{margin:0}
.status{font-size:1.1em;font-weight:700;color:#fff;padding:.45em .8em;border-radius:4px;margin:.6em 0}
.badge{display:inline-block;color:#fff;font-weight:600;font-size:12px;padding:0 6px;border-radius:3px;
white-space:nowrap}
.counts .badge{margin-right:.2em}.counts span.c{margin-right:1.2em}
.muted{color:#666}.nowrap{white-space:nowrap}.small{font-size:12px}
ul.failures li{color:#b71c1c}
.known{border-left:4px solid #8e24aa;padding:.2em .8em;margin:.5em 0;background:#faf5fc}
table.sortable thead th{cursor:pointer;user-select:none;white-space:nowrap}
table.sortable thead th:hover{background:#e6e6e6}
table.sortable thead th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
table.sortable thead th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
tr.failed td:first-child{box-shadow:inset 4px 0 #c62828}
table.drift td{text-align:center;min-width:7.5em;padding:4px 6px}
table.drift td>b{font-size:15px;display:block}
table.drift td small{display:block;font-size:11px;white-space:nowrap}
table.drift th.change{font-weight:500;max-width:26em}
table.drift tr.layer th{background:#e3eaf5}
.legend{display:flex;flex-wrap:wrap;gap:0;align-items:center;font-size:12px;margin:.2em 0 .6em}
.legend span{padding:2px 8px;border:1px solid #ccc;margin-right:-1px}
table.heat td{width:26px;height:22px;padding:0;text-align:center;color:#fff;font-size:11px;font-weight:700}
table.heat th{font-size:11px;font-weight:500;text-align:center;padding:2px 3px;overflow-wrap:anywhere;min-width:26px}
table.heat th.axis{text-align:right;color:#666;background:#fafafa}
table.heat th.row{text-align:left;white-space:nowrap;font-weight:600}
img{max-width:100%;height:auto}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px;font-size:12px}
details summary{cursor:pointer;color:#1565c0;margin:.3em 0}
.card{border:1px solid #ddd;border-radius:4px;padding:.6em 1em;margin:.8em 0}.card h2{margin-top:.2em}
"""

# Sorts a table.sortable by the clicked header: numbers (data-type="num", value in data-v) largest first on the
# first click, text A-Z; cells without a value go last. Marks <html data-sortable="N"> once wired (tests read it).
_SCRIPT = """
(function(){
function key(td,num){var v=td.getAttribute('data-v');if(v===null)v=td.textContent.trim();
if(!num)return v.toLowerCase();if(v==='')return null;var f=parseFloat(v);return isNaN(f)?null:f;}
function sort(t,i,th,hs){var num=th.getAttribute('data-type')==='num',was=th.getAttribute('aria-sort');
var asc=was?was!=='ascending':!num;
for(var j=0;j<hs.length;j++)hs[j].removeAttribute('aria-sort');
th.setAttribute('aria-sort',asc?'ascending':'descending');
var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);
rows.sort(function(r,s){var a=key(r.cells[i],num),c=key(s.cells[i],num);
if(a===null||c===null)return a===c?0:a===null?1:-1;var d=num?a-c:(a<c?-1:a>c?1:0);return asc?d:-d;});
for(var k=0;k<rows.length;k++)b.appendChild(rows[k]);}
var tables=document.querySelectorAll('table.sortable');
Array.prototype.forEach.call(tables,function(t){var hs=t.tHead.rows[t.tHead.rows.length-1].cells;
Array.prototype.forEach.call(hs,function(th,i){th.tabIndex=0;th.title=th.title||'click to sort';
th.addEventListener('click',function(){sort(t,i,th,hs);});
th.addEventListener('keydown',function(e){if(e.key==='Enter')sort(t,i,th,hs);});});});
document.documentElement.setAttribute('data-sortable',String(tables.length));
})();
"""


def _page(title: str, body: Iterable[str]) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}<script>{_SCRIPT}</script></body></html>")
