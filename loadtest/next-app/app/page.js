// `/`: rendered on every request (no cache, no data fetching).
import Catalogue from "./catalogue";

export const dynamic = "force-dynamic";

export default function Page() {
  return <Catalogue />;
}
