//! Website and e-mail domains.

/// Second-level labels under which registrations happen one level deeper (`example.co.uk`).
/// A small list instead of the whole public suffix list: enough for the countries the group
/// data holds; an unknown one only makes a domain key one label shorter (`shop.example.xy`
/// still meets `example.xy`).
const SECOND_LEVEL: &[&str] = &[
    "co.uk", "org.uk", "ac.uk", "gov.uk", "com.au", "net.au", "co.at", "or.at", "ac.at", "com.pl",
    "net.pl", "org.pl", "co.nz", "co.jp", "com.br", "com.tr", "com.cn", "co.za", "com.es",
    "com.mx", "co.in",
];

/// Mail providers whose domain never identifies a company.
const FREE_MAIL: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "yahoo.de",
    "yahoo.fr",
    "yahoo.it",
    "yahoo.es",
    "yahoo.co.uk",
    "hotmail.com",
    "hotmail.de",
    "hotmail.fr",
    "hotmail.it",
    "outlook.com",
    "outlook.de",
    "live.com",
    "live.de",
    "msn.com",
    "gmx.de",
    "gmx.net",
    "gmx.at",
    "gmx.ch",
    "gmx.com",
    "web.de",
    "t-online.de",
    "freenet.de",
    "aol.com",
    "aol.de",
    "icloud.com",
    "me.com",
    "mac.com",
    "mail.de",
    "posteo.de",
    "mailbox.org",
    "protonmail.com",
    "proton.me",
    "yandex.ru",
    "mail.ru",
    "wp.pl",
    "o2.pl",
    "onet.pl",
    "interia.pl",
    "libero.it",
    "virgilio.it",
    "orange.fr",
    "free.fr",
    "laposte.net",
    "wanadoo.fr",
    "sfr.fr",
    "ziggo.nl",
    "kpnmail.nl",
    "telenet.be",
    "skynet.be",
    "bluewin.ch",
    "a1.net",
    "chello.at",
    "arcor.de",
    "online.de",
    "vodafone.de",
    "email.de",
    "tutanota.com",
    "zoho.com",
];

/// Local parts of shared mailboxes: they name a function, not a person.
const ROLE_MAILBOXES: &[&str] = &[
    "info",
    "office",
    "kontakt",
    "contact",
    "sales",
    "vertrieb",
    "service",
    "support",
    "mail",
    "admin",
    "hello",
    "hallo",
    "team",
    "buchhaltung",
    "accounting",
    "invoice",
    "invoices",
    "rechnung",
    "rechnungen",
    "einkauf",
    "purchasing",
    "post",
    "zentrale",
    "empfang",
    "noreply",
    "no-reply",
    "billing",
    "hr",
    "jobs",
    "karriere",
    "marketing",
    "presse",
    "press",
];

/// True when `domain` (already normalized) belongs to a free-mail provider.
pub fn is_free_mail(domain: &str) -> bool {
    FREE_MAIL.contains(&domain)
}

/// True when the local part names a function (`info@`), not a person.
pub fn is_role_mailbox(local: &str) -> bool {
    ROLE_MAILBOXES.contains(&local)
}

/// The registrable domain of a website or host: scheme, user info, port, path, query and a
/// leading `www.` go; `shop.example.com` becomes `example.com`. `None` for what is not a
/// host name.
pub fn domain_of_website(input: &str) -> Option<String> {
    let mut s = input.trim().to_lowercase();
    if let Some(i) = s.find("://") {
        s.drain(..i + 3);
    } else if let Some(rest) = s.strip_prefix("//") {
        s = rest.to_owned();
    }
    let end = s.find(['/', '?', '#']).unwrap_or(s.len());
    s.truncate(end);
    if let Some(i) = s.rfind('@') {
        s.drain(..=i);
    }
    if let Some(i) = s.find(':') {
        s.truncate(i);
    }
    let s = s.trim_end_matches('.');
    let valid = !s.is_empty()
        && s.contains('.')
        && s.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if !valid {
        return None;
    }
    let labels: Vec<&str> = s.split('.').collect();
    let keep = if labels.len() >= 3 {
        let last_two = labels[labels.len() - 2..].join(".");
        if SECOND_LEVEL.contains(&last_two.as_str()) {
            3
        } else {
            2
        }
    } else {
        labels.len()
    };
    Some(labels[labels.len() - keep..].join("."))
}

/// An e-mail address split for matching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email {
    /// Lowercased `local@domain` with the registrable domain.
    pub address: String,
    /// The registrable domain.
    pub domain: String,
    /// True when the domain is a free-mail provider (it never identifies a company).
    pub free_mail: bool,
    /// True when the local part is a shared mailbox (`info@`): it never identifies a person.
    pub role: bool,
}

/// Lowercases and checks an address; `None` when it is not one.
pub fn normalize_email(input: &str) -> Option<Email> {
    let s = input.trim().trim_start_matches("mailto:").to_lowercase();
    let (local, host) = s.rsplit_once('@')?;
    let local = local.trim();
    if local.is_empty() || local.contains(char::is_whitespace) {
        return None;
    }
    let domain = domain_of_website(host)?;
    Some(Email {
        address: format!("{local}@{domain}"),
        free_mail: is_free_mail(&domain),
        role: is_role_mailbox(local),
        domain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websites_reduce_to_the_registrable_domain() {
        for w in [
            "https://www.nordwind.de/kontakt?x=1",
            "http://nordwind.de",
            "www.Nordwind.DE",
            "nordwind.de/",
            "shop.nordwind.de:8080",
        ] {
            assert_eq!(domain_of_website(w).as_deref(), Some("nordwind.de"), "{w}");
        }
        assert_eq!(
            domain_of_website("www.acme.co.uk").as_deref(),
            Some("acme.co.uk")
        );
        assert_eq!(domain_of_website("not a domain"), None);
        assert_eq!(domain_of_website(""), None);
    }

    #[test]
    fn mail_addresses() {
        let e = normalize_email(" Anna.Berg@Mail.Nordwind.de ").unwrap();
        assert_eq!(e.address, "anna.berg@nordwind.de");
        assert!(!e.free_mail && !e.role);
        assert!(normalize_email("x@gmx.de").unwrap().free_mail);
        assert!(normalize_email("info@nordwind.de").unwrap().role);
        assert_eq!(normalize_email("no-at-sign"), None);
    }
}
