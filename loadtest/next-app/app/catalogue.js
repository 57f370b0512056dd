// The bench page: a product list with the same deterministic ~25 KB of HTML on every render, so
// a proxy's answer can be checked byte for byte. app/page.js renders it on every request,
// app/prerendered/page.js once at build time (then next start serves the stored HTML).

const WORDS = (
  "light trail tent pack stove bottle merino jacket shell insulated down synthetic camp alpine " +
  "hiking ridge river canyon summit forest coastal expedition compact durable waterproof " +
  "breathable packable recycled classic pro ultra stretch thermal windproof insulation layer " +
  "zip pocket hood strap frame foam sleeping mat lantern headlamp poles gaiters gloves beanie"
).split(" ");
const CATS = ["tents", "packs", "sleeping", "cooking", "clothing", "footwear", "lighting", "water"];
const ITEMS = 10;

function products() {
  let state = 14n;
  const rnd = (n) => {
    state = (state * 6364136223846793005n + 1442695040888963407n) % 18446744073709551616n;
    return Number((state >> 33n) % BigInt(n));
  };
  const phrase = (n) => Array.from({ length: n }, () => WORDS[rnd(WORDS.length)]).join(" ");
  const title = (s) => s.replace(/\b\w/g, (c) => c.toUpperCase());
  return Array.from({ length: ITEMS }, () => {
    const sku = 10000 + rnd(90000);
    const name = title(phrase(3));
    const desc = phrase(8 + rnd(10));
    return {
      sku,
      name,
      slug: `${name.toLowerCase().replaceAll(" ", "-")}-${sku}`,
      category: CATS[rnd(CATS.length)],
      desc: desc[0].toUpperCase() + desc.slice(1) + ".",
      price: `${9 + rnd(400)}.${String(rnd(100)).padStart(2, "0")}`,
      rating: `${1 + rnd(4)}.${rnd(10)}`,
      inStock: rnd(5) !== 0,
    };
  });
}

export default function Catalogue() {
  const items = products();
  return (
    <>
      <header className="site-header">
        <a className="logo" href="/">Example Store</a>
        <nav>
          <ul>
            {CATS.map((c) => (
              <li key={c}><a href={`/c/${c}`}>{c[0].toUpperCase() + c.slice(1)}</a></li>
            ))}
          </ul>
        </nav>
        <form className="search" action="/search">
          <input type="search" name="q" placeholder="Search products" aria-label="Search" />
        </form>
      </header>
      <main className="catalogue">
        <h1>All products</h1>
        <ul className="product-grid">
          {items.map((p) => (
            <li key={p.sku} className="product-card" data-sku={`SKU-${p.sku}`} data-category={p.category}>
              <a className="product-link" href={`/products/${p.slug}`}>
                <img src={`/img/p/${p.sku}-480w.webp`} alt={p.name} loading="lazy" width="240" height="240" />
                <h2 className="product-title">{p.name}</h2>
              </a>
              <p className="product-desc">{p.desc}</p>
              <div className="price-row">
                <span className="price">${p.price}</span>{" "}
                <span className="rating" aria-label={`${p.rating} out of 5`}>{p.rating}</span>{" "}
                <span className={`stock ${p.inStock ? "in-stock" : "out-of-stock"}`}>{p.inStock ? "In stock" : "Sold out"}</span>
              </div>
              <button className="add-to-cart" type="button" data-sku={`SKU-${p.sku}`}>Add to cart</button>
            </li>
          ))}
        </ul>
        <nav className="pagination">
          <a href="?page=1" aria-current="page">1</a> <a href="?page=2">2</a> <a href="?page=2" rel="next">Next</a>
        </nav>
      </main>
      <footer className="site-footer" data-bench-end="1"><p>&copy; 2026 Example Store. Prices include VAT.</p></footer>
    </>
  );
}
