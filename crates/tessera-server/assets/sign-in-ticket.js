// The `/sign-in?ticket=…` page: redeems an impersonation ticket by POST (never on GET), removes
// it from the address bar first, then shows the signed-in page (with its impersonation banner).
import { TesseraClient } from "/static/tessera.js";

const params = new URLSearchParams(window.location.search);
const ticket = params.get("ticket");
history.replaceState(null, "", window.location.pathname);
const title = document.getElementById("title");
const status = document.getElementById("ticket-status");

async function main() {
  if (!ticket) {
    window.location.replace("/sign-in");
    return;
  }
  try {
    const result = await new TesseraClient().exchangeTicket(ticket);
    window.location.replace(result.redirect_url || "/sign-in");
  } catch (error) {
    title.textContent = "This link cannot be used";
    status.textContent = error.code === "invalid_ticket"
      ? "The link has expired or has already been used. Ask for a new one."
      : `Signing in failed: ${error.message}`;
  }
}

main();
