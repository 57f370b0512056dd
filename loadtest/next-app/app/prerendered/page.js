// `/prerendered`: the same page, rendered once by `next build`; next start serves the stored HTML.
import Catalogue from "../catalogue";

export const dynamic = "force-static";

export default function Page() {
  return <Catalogue />;
}
